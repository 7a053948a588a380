"""Workflows: harnesses that fit a model several times and compare the answers.

They sit above the drivers and diagnostics (they call both), below the command line:

* :func:`compare_guides`: every guide family against NUTS on one model and data set;
* :func:`simulation_based_calibration`: SBC ranks for any model and fitting method;
* :func:`select_components`: BIC, AIC, PSIS-LOO and ELBO across the number of components.
"""

from ppl_models.workflows.calibration import SBCResult, simulation_based_calibration
from ppl_models.workflows.compare import GuideComparison, compare_guides
from ppl_models.workflows.select_k import plot_selection, select_components

__all__ = [
    "GuideComparison",
    "SBCResult",
    "compare_guides",
    "plot_selection",
    "select_components",
    "simulation_based_calibration",
]
