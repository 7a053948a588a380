"""ppl-models: latent-variable models in Pyro, fitted by EM, SVI and NUTS, read with ArviZ.

The flow is one-way: ``data -> models -> guides -> infer -> diagnostics -> workflows -> cli``
(``tests/test_layering.py`` holds the map and fails on an import against it).
scikit-learn's vocabulary (``fit``/``predict_proba``/``score``/``bic``, for pipelines and grid
searches) is in :mod:`ppl_models.sklearn`: ``from ppl_models.sklearn import GaussianMixture``.
"""

from ppl_models.data import load
from ppl_models.infer import FitResult, fit_em
from ppl_models.models import GaussianMixture, StudentTMixture
from ppl_models.priors import stick_breaking_prior

__version__ = "0.1.0"

__all__ = [
    "FitResult",
    "GaussianMixture",
    "StudentTMixture",
    "fit_em",
    "load",
    "stick_breaking_prior",
]
