"""What a guide needs to know about a model, read from the model object itself.

``guides`` imports nothing from ``ppl_models``: a model is any callable Pyro model, or an object
with a ``model`` method and optional attributes

* ``enumerated_sites``: discrete latents summed out by enumeration, which guides must not cover;
* ``marginal_model``: the same posterior over the other latents with the enumerated sites summed
  out in closed form (same site names);
* ``local_plate`` / ``local_sites``: the per-observation plate and the latents inside it that an
  encoder can amortise;
* ``max_plate_nesting``;
* ``create_plates(*args, **kwargs)``: the model's plates for given arguments, needed by guides
  when the model subsamples a plate with explicit indices (Pyro's autoguide option of that
  name), which a traced run with other arguments cannot show.

What one traced run reveals (names, shapes, supports, plates) is read by :func:`latent_sites`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions.constraints import Constraint

__all__ = [
    "LatentSite",
    "declared_create_plates",
    "declared_local_latents",
    "enumerated_sites",
    "global_latent_supports",
    "guide_visible_model",
    "latent_sites",
    "model_callable",
    "model_name",
]


def model_callable(model: Any) -> Callable:
    """The Pyro model function of a model object (or the callable itself)."""
    fn = getattr(model, "model", model)
    if not callable(fn):
        raise TypeError(f"expected a Pyro model or an object with a .model method; got {model!r}")
    return fn


def model_name(model: Any) -> str:
    """A short name of the model for messages."""
    return getattr(model, "__name__", type(model).__name__)


def enumerated_sites(model: Any) -> tuple[str, ...]:
    """Sites the model sums out by enumeration (declared by the model)."""
    return tuple(getattr(model, "enumerated_sites", ()))


def declared_local_latents(model: Any) -> tuple[str, ...]:
    """The continuous per-observation latents the model declares: ``local_sites`` that are not
    enumerated (empty without a ``local_plate``)."""
    if not getattr(model, "local_plate", None):
        return ()
    hidden = set(enumerated_sites(model))
    return tuple(s for s in getattr(model, "local_sites", ()) if s not in hidden)


def declared_create_plates(model: Any) -> Callable | None:
    """The model's ``create_plates`` method, if it declares one."""
    fn = getattr(model, "create_plates", None)
    return fn if callable(fn) else None


def guide_visible_model(model: Any, hide: tuple[str, ...] = ()) -> Callable:
    """The model as a guide should see it: without its enumerated sites (and ``hide``).

    When the model object has a ``marginal_model`` (the enumerated sites summed out in closed
    form, the same posterior over the other sites under the same names) that callable is used:
    its log density is exact, so a guide may evaluate it (the Laplace approximation's Hessian,
    Tierney & Kadane 1986), and it is cheaper to trace. Otherwise the enumerated sites are
    blocked with :func:`pyro.poutine.block`, which hides them from the guide but still draws
    them from their prior: enough to read the structure, not to evaluate a density.
    """
    marginal = getattr(model, "marginal_model", None)
    if marginal is not None and enumerated_sites(model):
        fn, hidden = marginal, list(hide)
    else:
        fn, hidden = model_callable(model), [*enumerated_sites(model), *hide]
    return poutine.block(fn, hide=hidden) if hidden else fn


@dataclass(frozen=True)
class LatentSite:
    """One latent site a guide covers, as a traced run shows it.

    Attributes
    ----------
    name : str
    shape : tuple of int
        Shape of the site's value (batch shape then event shape).
    event_dim : int
    support : Constraint
    plates : tuple of str
        Names of the plates the site sits in, innermost first.
    local : bool
        Whether it sits in the model's ``local_plate`` (one value per observation).
    """

    name: str
    shape: tuple[int, ...]
    event_dim: int
    support: Constraint
    plates: tuple[str, ...]
    local: bool

    @property
    def discrete(self) -> bool:
        return bool(self.support.is_discrete)


def latent_sites(model: Any, *args: Any, **kwargs: Any) -> dict[str, LatentSite]:
    """Every latent site a guide must cover, from one traced run of
    :func:`guide_visible_model` with the model's arguments, in the model's order.

    Latent means sampled, not observed, not a plate's subsample and not enumerated.
    """
    trace = poutine.trace(guide_visible_model(model)).get_trace(*args, **kwargs)
    local_plate = getattr(model, "local_plate", None)
    sites = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        plates = tuple(f.name for f in site["cond_indep_stack"])
        sites[name] = LatentSite(
            name=name,
            shape=tuple(site["value"].shape),
            event_dim=site["fn"].event_dim,
            support=site["fn"].support,
            plates=plates,
            local=bool(local_plate) and local_plate in plates,
        )
    return sites


def global_latent_supports(model: Any, *args: Any, **kwargs: Any) -> dict[str, Constraint]:
    """Support of every global latent site, from one traced run of the model.

    Global means: latent (see :func:`latent_sites`) and outside the model's ``local_plate``
    (per-observation latents are left to an encoder). Order is the model's.
    """
    return {
        name: site.support
        for name, site in latent_sites(model, *args, **kwargs).items()
        if not site.local
    }
