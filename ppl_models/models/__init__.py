"""Models of the collection, each a small class of structure and priors with a Pyro ``model``.

The roles a model may take (what drivers, diagnostics and workflows ask of it) are in
:mod:`ppl_models.models.protocols`; :data:`MODELS` (:mod:`ppl_models.models.registry`) maps
registry names to every model class, :data:`MIXTURES` to the finite mixtures. Importing
:mod:`ppl_models.models.mixture_vae` here registers the ``"mog"`` and ``"vamp"`` latent priors.
"""

from ppl_models.models.adversarial_autoencoder import AdversarialAutoencoder, WassersteinAutoencoder
from ppl_models.models.clustering_aae import ClusteringAdversarialAutoencoder
from ppl_models.models.gan import DCGAN, GAN
from ppl_models.models.gmm import GaussianMixture
from ppl_models.models.infogan import InfoGAN
from ppl_models.models.labelled_aae import LabelledAdversarialAutoencoder, with_labels
from ppl_models.models.mixture import FiniteMixture
from ppl_models.models.mixture_vae import GMVAE, MixtureOfGaussiansPrior, VampPrior
from ppl_models.models.protocols import (
    AdversarialModel,
    AmortizedModel,
    ClosedFormEM,
    CollapsedLikelihood,
    CollapsedPosterior,
    ImportanceWeighted,
    LabelledAmortized,
    LatentModel,
    MixtureModel,
)
from ppl_models.models.registry import MIXTURES, MODELS, build_model
from ppl_models.models.student_t_mixture import StudentTMixture
from ppl_models.models.vae import VAE

__all__ = [
    "DCGAN",
    "GAN",
    "GMVAE",
    "MIXTURES",
    "MODELS",
    "VAE",
    "AdversarialAutoencoder",
    "AdversarialModel",
    "AmortizedModel",
    "ClosedFormEM",
    "ClusteringAdversarialAutoencoder",
    "CollapsedLikelihood",
    "CollapsedPosterior",
    "FiniteMixture",
    "GaussianMixture",
    "ImportanceWeighted",
    "InfoGAN",
    "LabelledAdversarialAutoencoder",
    "LabelledAmortized",
    "LatentModel",
    "MixtureModel",
    "MixtureOfGaussiansPrior",
    "StudentTMixture",
    "VampPrior",
    "WassersteinAutoencoder",
    "build_model",
    "with_labels",
]
