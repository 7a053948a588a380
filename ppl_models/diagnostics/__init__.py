"""Diagnostics of a fit: ArviZ conversion, relabelling, summaries, LOO and plots.

Everything here reads a :class:`~ppl_models.infer.result.FitResult` (and the model it holds);
nothing calls back into a driver.
"""

from ppl_models.diagnostics.inference_data import to_inference_data
from ppl_models.diagnostics.plots import (
    plot_mixture,
    plot_objective,
    plot_posterior,
    plot_trace,
    save_plots,
)
from ppl_models.diagnostics.relabel import relabel_draws, relabel_result
from ppl_models.diagnostics.summary import loo, summarize

__all__ = [
    "loo",
    "plot_mixture",
    "plot_objective",
    "plot_posterior",
    "plot_trace",
    "relabel_draws",
    "relabel_result",
    "save_plots",
    "summarize",
    "to_inference_data",
]
