"""scikit-learn's vocabulary for the collection: ``from ppl_models.sklearn import GaussianMixture``.

The estimator lives in the workflows layer (:mod:`ppl_models.workflows.estimator`): it fits
through :mod:`ppl_models.infer` and reads the fit through :mod:`ppl_models.diagnostics`.
"""

from ppl_models.workflows.estimator import GaussianMixture

__all__ = ["GaussianMixture"]
