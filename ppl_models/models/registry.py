"""The one registry of model classes: name -> class, typed against the roles.

:class:`~ppl_models.infer.result.FitResult` rebuilds a saved model from here (the saved
``name`` and ``config``, through the class's ``from_config``); the command line reads its
choices from here. A new family joins with one entry.
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist

from ppl_models.models.adversarial_autoencoder import AdversarialAutoencoder, WassersteinAutoencoder
from ppl_models.models.clustering_aae import ClusteringAdversarialAutoencoder
from ppl_models.models.gan import DCGAN, GAN
from ppl_models.models.gmm import GaussianMixture
from ppl_models.models.infogan import InfoGAN
from ppl_models.models.labelled_aae import LabelledAdversarialAutoencoder
from ppl_models.models.mixture import FiniteMixture
from ppl_models.models.mixture_vae import GMVAE
from ppl_models.models.protocols import LatentModel
from ppl_models.models.student_t_mixture import StudentTMixture
from ppl_models.models.vae import VAE

__all__ = ["MIXTURES", "MODELS", "PRIOR_DISTRIBUTIONS", "build_model"]

#: The finite mixtures (enumerated labels, EM / SVI / NUTS).
MIXTURES: dict[str, type[FiniteMixture]] = {
    GaussianMixture.name: GaussianMixture,
    StudentTMixture.name: StudentTMixture,
}

#: Every model class of the collection by its registry name.
MODELS: dict[str, type[LatentModel]] = {
    **MIXTURES,
    VAE.name: VAE,
    GMVAE.name: GMVAE,
    GAN.name: GAN,
    DCGAN.name: DCGAN,
    InfoGAN.name: InfoGAN,
    AdversarialAutoencoder.name: AdversarialAutoencoder,
    WassersteinAutoencoder.name: WassersteinAutoencoder,
    ClusteringAdversarialAutoencoder.name: ClusteringAdversarialAutoencoder,
    LabelledAdversarialAutoencoder.name: LabelledAdversarialAutoencoder,
}


#: Distributions a saved prior may name: a saved result is rebuilt only from these classes
#: (never by looking an arbitrary name up in :mod:`pyro.distributions`).
PRIOR_DISTRIBUTIONS: dict[str, type[dist.Distribution]] = {
    cls.__name__: cls
    for cls in (
        dist.Beta,
        dist.Cauchy,
        dist.Dirichlet,
        dist.Exponential,
        dist.Gamma,
        dist.HalfCauchy,
        dist.HalfNormal,
        dist.InverseGamma,
        dist.Laplace,
        dist.LKJCholesky,
        dist.LogNormal,
        dist.MultivariateNormal,
        dist.Normal,
        dist.StudentT,
        dist.Uniform,
    )
}


def build_model(name: str, config: dict[str, Any], priors: dict[str, Any]) -> LatentModel:
    """The registered model ``name`` built from its saved ``config`` and ``priors``.

    Raises
    ------
    ValueError
        For an unknown name or a configuration the class refuses (naming what is wrong).
    """
    cls = MODELS.get(name)
    if cls is None:
        raise ValueError(f"model.name: unknown model {name!r}; known: {sorted(MODELS)}")
    try:
        return cls.from_config(config, priors)
    except (TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"model.config: {name} cannot be built from {config!r} ({exc})") from None
