"""How users state priors on a model's global sites, and their validation.

A prior for a site is one of

* a Pyro/torch ``Distribution`` whose support lies inside the site's domain and whose shape
  broadcasts to the site's shape;
* a callable ``f(data) -> Distribution`` (data may be ``None`` when a model simulates), for
  priors centred or scaled on the data;
* a ``torch.Tensor``: the site is *fixed* at that value and is no longer a latent variable.

Validation happens at construction so a mistake is reported before any fitting starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pyro.distributions as dist
import torch
from torch.distributions import constraints
from torch.distributions.transforms import (
    AffineTransform,
    SigmoidTransform,
    StickBreakingTransform,
)

PriorSpec = dist.Distribution | Callable[[torch.Tensor | None], dist.Distribution] | torch.Tensor

__all__ = ["PriorSpec", "SiteSpec", "check_priors", "stick_breaking_prior"]


@dataclass(frozen=True)
class SiteSpec:
    """What a global site accepts: its domain and shapes.

    Attributes
    ----------
    domain : torch.distributions.constraints.Constraint
        The set the site's value lives in (``real``, ``positive``, ``simplex``, ...).
    event_dim : int
        Number of rightmost dimensions that form one draw of the site's distribution.
    description : str
        Human words for error messages (``"component weights (a simplex of size K)"``).
    """

    domain: constraints.Constraint
    event_dim: int
    description: str


def _lower_bound(c: constraints.Constraint) -> float | None:
    base = getattr(c, "base_constraint", c)
    if isinstance(base, constraints.greater_than | constraints.greater_than_eq):
        return float(base.lower_bound)
    if isinstance(base, constraints.interval | constraints.half_open_interval):
        return float(base.lower_bound)
    if base is constraints.positive_definite or base is constraints.unit_interval:
        return 0.0
    return None


def _is_real_valued(c: constraints.Constraint) -> bool:
    base = getattr(c, "base_constraint", c)
    return not base.is_discrete and isinstance(
        base,
        constraints._Real
        | constraints.greater_than
        | constraints.greater_than_eq
        | constraints.less_than
        | constraints.interval
        | constraints.half_open_interval,
    )


def support_fits(support: constraints.Constraint, domain: constraints.Constraint) -> bool:
    """Whether every value in ``support`` lies in ``domain`` (for the domains models use)."""
    support_base = getattr(support, "base_constraint", support)
    domain_base = getattr(domain, "base_constraint", domain)
    if isinstance(domain_base, constraints._Real):
        return _is_real_valued(support_base)
    if isinstance(domain_base, constraints.greater_than | constraints.greater_than_eq):
        low = _lower_bound(support_base)
        return _is_real_valued(support_base) and low is not None and low >= domain_base.lower_bound
    return type(support_base) is type(domain_base)


def _resolve(spec: PriorSpec, data: torch.Tensor | None) -> dist.Distribution | torch.Tensor:
    if isinstance(spec, torch.Tensor | dist.Distribution):
        return spec
    return spec(data)


def check_prior(
    name: str,
    spec: PriorSpec,
    site: SiteSpec,
    site_shape: tuple[int, ...] | None,
    data: torch.Tensor | None = None,
) -> None:
    """Refuse a prior whose support or shape does not fit a site.

    Parameters
    ----------
    name : str
        The site's name, used in every message.
    spec : Distribution, callable or Tensor
        The user's prior (see the module docstring).
    site : SiteSpec
        The site's domain and event dimension.
    site_shape : tuple of int or None
        The full shape of one value of the site (batch and event), e.g. ``(K, D)``; ``None``
        while it is not known yet (only the support is checked, and callables are not called).
    data : Tensor, optional
        Passed to callable priors so they can be checked too.

    Raises
    ------
    ValueError
        Naming the site, what it needs and what it was given.
    """
    if not (isinstance(spec, torch.Tensor | dist.Distribution) or callable(spec)):
        raise ValueError(
            f"prior for '{name}' must be a Pyro distribution, a callable returning one, or a "
            f"tensor fixing the value; got {type(spec).__name__}"
        )
    if site_shape is None and not isinstance(spec, torch.Tensor | dist.Distribution):
        return
    value = _resolve(spec, data)
    if isinstance(value, torch.Tensor) and site_shape is None:
        if not torch.isfinite(value).all() or not bool(site.domain.check(value).all()):
            raise ValueError(f"fixed value for '{name}' is outside its domain: {site.description}")
        return
    if isinstance(value, torch.Tensor):
        try:
            fixed = value.expand(site_shape)
        except RuntimeError:
            raise ValueError(
                f"fixed value for '{name}' has shape {tuple(value.shape)}, which does not "
                f"broadcast to the site's shape {site_shape}"
            ) from None
        if not torch.isfinite(fixed).all() or not bool(site.domain.check(fixed).all()):
            raise ValueError(f"fixed value for '{name}' is outside its domain: {site.description}")
        return
    if not isinstance(value, dist.Distribution):
        raise ValueError(
            f"callable prior for '{name}' returned {type(value).__name__}, not a distribution"
        )
    if not support_fits(value.support, site.domain):
        raise ValueError(
            f"prior for '{name}' has support {value.support}, but '{name}' is "
            f"{site.description}; choose a distribution supported there"
        )
    if site_shape is None:
        return
    event_shape = tuple(value.event_shape)
    site_event = site_shape[len(site_shape) - site.event_dim :] if site.event_dim else ()
    full = tuple(value.batch_shape) + event_shape
    if len(event_shape) > len(site_shape) or (
        event_shape and event_shape != site_shape[len(site_shape) - len(event_shape) :]
    ):
        raise ValueError(
            f"prior for '{name}' has event shape {event_shape}; '{name}' needs values of shape "
            f"{site_shape} ({site.description})"
        )
    if site.event_dim and len(event_shape) > site.event_dim:
        raise ValueError(
            f"prior for '{name}' has event shape {event_shape}; one draw of '{name}' has shape "
            f"{site_event}"
        )
    try:
        torch.broadcast_shapes(full, site_shape)
        if torch.broadcast_shapes(full, site_shape) != site_shape:
            raise RuntimeError
    except RuntimeError:
        raise ValueError(
            f"prior for '{name}' has shape {full} (batch {tuple(value.batch_shape)}, event "
            f"{event_shape}), which does not broadcast to the site's shape {site_shape}"
        ) from None


def check_priors(
    priors: Mapping[str, PriorSpec] | None,
    sites: Mapping[str, SiteSpec],
    shapes: Mapping[str, tuple[int, ...]] | None,
    data: torch.Tensor | None = None,
) -> dict[str, PriorSpec]:
    """Validate a user's ``priors`` mapping against a model's sites; return a plain dict.

    With ``shapes=None`` only supports are checked (the shapes are not known yet).
    """
    priors = dict(priors or {})
    unknown = sorted(set(priors) - set(sites))
    if unknown:
        raise ValueError(
            f"unknown prior site(s) {unknown}; this model's global sites are {sorted(sites)}"
        )
    for name, spec in priors.items():
        check_prior(name, spec, sites[name], None if shapes is None else shapes[name], data)
    return priors


def stick_breaking_prior(concentration: float, n_components: int) -> dist.Distribution:
    r"""Truncated stick-breaking (Dirichlet-process) prior on mixture weights.

    With :math:`v_k \sim \mathrm{Beta}(1, \alpha)` for :math:`k < K`,

    .. math:: w_k = v_k \prod_{j<k} (1 - v_j), \qquad w_K = \prod_{j<K} (1 - v_j),

    the GEM(:math:`\alpha`) construction of Sethuraman (1994), truncated at :math:`K` components
    as in Ishwaran & James (2001), "Gibbs sampling methods for stick-breaking priors", JASA.
    Small :math:`\alpha` puts most mass on few components, so unneeded components get small
    weights instead of being forced to exist.

    The density is exact: torch's :class:`StickBreakingTransform` is this map applied to
    :math:`\mathrm{logit}(v_k) + \log(K - k)`, so the Beta draws are pushed through
    ``logit``, a shift and that transform, and the log-determinants are torch's own.

    Parameters
    ----------
    concentration : float
        :math:`\alpha > 0`.
    n_components : int
        The truncation level :math:`K \ge 2`.
    """
    if not concentration > 0 or not math.isfinite(concentration):
        raise ValueError(f"stick-breaking concentration must be positive; got {concentration}")
    if n_components < 2:
        raise ValueError(f"stick-breaking needs at least 2 components; got {n_components}")
    k = n_components - 1
    sticks = dist.Beta(torch.ones(k), torch.full((k,), float(concentration))).to_event(1)
    offset = torch.arange(k, 0, -1, dtype=torch.get_default_dtype()).log()
    return dist.TransformedDistribution(
        sticks,
        [
            SigmoidTransform().inv,
            AffineTransform(loc=offset, scale=1.0, event_dim=1),
            StickBreakingTransform(),
        ],
    )
