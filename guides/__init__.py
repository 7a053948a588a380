"""Guide families that swap with one argument: ``build(kind, model, **options)``.

Each kind is a :class:`~guides.families.Family` in :data:`KINDS`, a registry (name -> family),
so a new family joins by one entry. Pyro's autoguides do the numerical work; this package hides
the model's enumerated sites from them (building on the model's ``marginal_model`` when it has
one), joins global and local parts, names the families and refuses the ones that cannot serve a
model:

========== ================================================ ===============================
kind       family                                           Pyro class
========== ================================================ ===============================
map        point mass at the posterior mode (MAP)            ``AutoDelta``
mean_field independent Normal per coordinate                 ``AutoNormal``
full_rank  one multivariate Normal over all coordinates      ``AutoMultivariateNormal``
low_rank   Normal with low-rank-plus-diagonal covariance     ``AutoLowRankMultivariateNormal``
flow       inverse autoregressive flow (Kingma et al. 2016)  ``AutoIAFNormal``
laplace    Gaussian at the mode with the Hessian's inverse   ``AutoLaplaceApproximation``
amortized  encoder for per-observation latents + a global    ``AutoGuideList``
           kind (Kingma & Welling 2014)
========== ================================================ ===============================

All of them live in the unconstrained space of the model's continuous latents, so draws have
each site's support. A user's own callable guide is passed through unchanged.

Modules: :mod:`guides.structure` (what is read from the model), :mod:`guides.families` (the
registry and :func:`build`), :mod:`guides.amortized` (the encoder guide),
:mod:`guides.laplace` (the checked Laplace approximation), :mod:`guides.flow` (the flow with a
point summary), :mod:`guides.posterior` (what a trained guide of each family says about the
posterior: :func:`fitted_posterior`).
"""

from __future__ import annotations

from guides.amortized import AmortizedGuide, AmortizedNormal, Encoder
from guides.families import GLOBAL_KINDS, KINDS, Family, applicable_kinds, build, refusal
from guides.flow import IAFNormal
from guides.laplace import LaplaceApproximation
from guides.posterior import FittedPosterior, fitted_posterior
from guides.structure import (
    LatentSite,
    declared_create_plates,
    declared_local_latents,
    enumerated_sites,
    global_latent_supports,
    guide_visible_model,
    latent_sites,
    model_callable,
)

__all__ = [
    "GLOBAL_KINDS",
    "KINDS",
    "AmortizedGuide",
    "AmortizedNormal",
    "Encoder",
    "Family",
    "FittedPosterior",
    "IAFNormal",
    "LaplaceApproximation",
    "LatentSite",
    "applicable_kinds",
    "build",
    "declared_create_plates",
    "declared_local_latents",
    "enumerated_sites",
    "fitted_posterior",
    "global_latent_supports",
    "guide_visible_model",
    "latent_sites",
    "model_callable",
    "refusal",
]
