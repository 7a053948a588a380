"""Guide families that swap with one argument: ``build(kind, model, **options)``.

Each kind is a builder in :data:`KINDS`, a registry (name -> builder), so a new family joins by
one entry. Pyro's autoguides do the numerical work; this package hides the model's enumerated
sites from them and names the families:

========== ================================================ ===============================
kind       family                                           Pyro class
========== ================================================ ===============================
map        point mass at the posterior mode (MAP)            ``AutoDelta``
mean_field independent Normal per coordinate                 ``AutoNormal``
full_rank  one multivariate Normal over all coordinates      ``AutoMultivariateNormal``
low_rank   Normal with low-rank-plus-diagonal covariance     ``AutoLowRankMultivariateNormal``
flow       inverse autoregressive flow (Kingma et al. 2016)  ``AutoIAFNormal``
laplace    Gaussian at the mode with the Hessian's inverse   ``AutoLaplaceApproximation``
========== ================================================ ===============================

All of them live in the unconstrained space of the model's continuous latents, so draws have
each site's support. A user's own callable guide is passed through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyro.infer import autoguide

from guides.structure import (
    enumerated_sites,
    global_latent_supports,
    guide_visible_model,
    model_callable,
)

__all__ = [
    "KINDS",
    "build",
    "enumerated_sites",
    "global_latent_supports",
    "guide_visible_model",
    "model_callable",
]


def _map(model: Any, **options: Any) -> autoguide.AutoGuide:
    return autoguide.AutoDelta(guide_visible_model(model), **options)


def _mean_field(model: Any, **options: Any) -> autoguide.AutoGuide:
    return autoguide.AutoNormal(guide_visible_model(model), **options)


def _full_rank(model: Any, **options: Any) -> autoguide.AutoGuide:
    return autoguide.AutoMultivariateNormal(guide_visible_model(model), **options)


def _low_rank(model: Any, *, rank: int | None = None, **options: Any) -> autoguide.AutoGuide:
    return autoguide.AutoLowRankMultivariateNormal(guide_visible_model(model), rank=rank, **options)


def _flow(model: Any, *, num_transforms: int = 2, **options: Any) -> autoguide.AutoGuide:
    return autoguide.AutoIAFNormal(
        guide_visible_model(model), num_transforms=num_transforms, **options
    )


def _laplace(model: Any, **options: Any) -> autoguide.AutoGuide:
    return autoguide.AutoLaplaceApproximation(guide_visible_model(model), **options)


#: Registry of guide families: name -> builder(model, **options).
KINDS: dict[str, Callable[..., Any]] = {
    "map": _map,
    "mean_field": _mean_field,
    "full_rank": _full_rank,
    "low_rank": _low_rank,
    "flow": _flow,
    "laplace": _laplace,
}


def build(kind: str | Callable, model: Any, **options: Any) -> Callable:
    """A guide of family ``kind`` for ``model``.

    Parameters
    ----------
    kind : str or callable
        A key of :data:`KINDS`, or a user's guide callable (returned as it is).
    model
        A Pyro model, or a model object with ``model`` and ``enumerated_sites``.
    **options
        Passed to the family's Pyro class (``init_loc_fn``, ``init_scale``, ``rank``,
        ``num_transforms``, ...).

    Raises
    ------
    ValueError
        For an unknown kind, listing the known ones.
    """
    model_callable(model)
    if callable(kind):
        return kind
    builder = KINDS.get(kind)
    if builder is None:
        raise ValueError(
            f"unknown guide kind {kind!r}; choose one of {sorted(KINDS)} or pass a callable"
        )
    return builder(model, **options)
