"""Models of the collection, each a small class of structure and priors with a Pyro ``model``.

``MODELS`` maps the command line's names to the mixture classes (what ``FitResult.load``
rebuilds); the VAE family (:class:`VAE`, :class:`GMVAE` and the latent priors) is exported
beside it. Importing :mod:`ppl_models.models.mixture_vae` here registers the ``"mog"`` and
``"vamp"`` latent priors.
"""

from ppl_models.models.gmm import GaussianMixture
from ppl_models.models.mixture import FiniteMixture
from ppl_models.models.mixture_vae import GMVAE, MixtureOfGaussiansPrior, VampPrior
from ppl_models.models.student_t_mixture import StudentTMixture
from ppl_models.models.vae import VAE

MODELS: dict[str, type[FiniteMixture]] = {
    GaussianMixture.name: GaussianMixture,
    StudentTMixture.name: StudentTMixture,
}

__all__ = [
    "GMVAE",
    "MODELS",
    "VAE",
    "FiniteMixture",
    "GaussianMixture",
    "MixtureOfGaussiansPrior",
    "StudentTMixture",
    "VampPrior",
]
