"""Models of the collection, each a small class of structure and priors with a Pyro ``model``.

``MODELS`` maps the command line's names to the classes.
"""

from ppl_models.models.gmm import GaussianMixture
from ppl_models.models.mixture import FiniteMixture
from ppl_models.models.student_t_mixture import StudentTMixture

MODELS: dict[str, type[FiniteMixture]] = {
    GaussianMixture.name: GaussianMixture,
    StudentTMixture.name: StudentTMixture,
}

__all__ = ["MODELS", "FiniteMixture", "GaussianMixture", "StudentTMixture"]
