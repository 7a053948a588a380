"""What a guide needs to know about a model, read from the model object itself.

``guides`` imports nothing from ``ppl_models``: a model is any callable Pyro model, or an object
with a ``model`` method and optional attributes ``enumerated_sites`` (discrete latents summed
out, which guides must not cover), ``local_plate`` / ``local_sites`` (per-observation latents
an encoder can amortise) and ``max_plate_nesting``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyro import poutine
from pyro.poutine.util import site_is_subsample

__all__ = [
    "enumerated_sites",
    "global_latent_supports",
    "guide_visible_model",
    "model_callable",
]


def model_callable(model: Any) -> Callable:
    """The Pyro model function of a model object (or the callable itself)."""
    fn = getattr(model, "model", model)
    if not callable(fn):
        raise TypeError(f"expected a Pyro model or an object with a .model method; got {model!r}")
    return fn


def enumerated_sites(model: Any) -> tuple[str, ...]:
    """Sites the model sums out by enumeration (declared by the model)."""
    return tuple(getattr(model, "enumerated_sites", ()))


def guide_visible_model(model: Any, hide: tuple[str, ...] = ()) -> Callable:
    """The model as a guide should see it: enumerated (and ``hide``) sites blocked."""
    hidden = [*enumerated_sites(model), *hide]
    fn = model_callable(model)
    return poutine.block(fn, hide=hidden) if hidden else fn


def global_latent_supports(model: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Support of every global latent site, from one traced run of the model.

    Global means: sampled, not observed, not enumerated, and outside the model's
    ``local_plate`` (per-observation latents are left to an encoder). Order is the model's.
    """
    trace = poutine.trace(guide_visible_model(model)).get_trace(*args, **kwargs)
    local_plate = getattr(model, "local_plate", None)
    supports = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        if local_plate and any(f.name == local_plate for f in site["cond_indep_stack"]):
            continue
        supports[name] = site["fn"].support
    return supports
