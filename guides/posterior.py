r"""What a trained guide says about the posterior: a point summary and draws of the global sites.

After training, each family reads its posterior its own way, and this is the one place that
knows how (drivers and workflows call :func:`fitted_posterior` and never branch on the guide's
type):

=============================== ==========================================================
guide                           fitted posterior
=============================== ==========================================================
``AutoLaplaceApproximation``    the Gaussian at the trained mode with the inverse Hessian of
                                the negative log posterior as covariance (Tierney & Kadane
                                1986), through the guide's ``laplace_approximation``
``AutoDelta``                   a point mass at the trained value
other autoguides                their ``median`` as the point (one draw when the family has
                                no median), draws by running the guide
a user's callable               traced: the point is one draw, draws are independent runs
=============================== ==========================================================

Rules are tried in order, the first whose class matches wins (:data:`RULES`), so a new family
with its own reading joins with one entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoGuide, AutoLaplaceApproximation

__all__ = ["RULES", "FittedPosterior", "fitted_posterior"]


@dataclass(frozen=True)
class FittedPosterior:
    """The posterior of the global sites a trained guide represents.

    Attributes
    ----------
    guide : callable
        The guide to draw from (for the Laplace family, its Gaussian at the mode).
    sites : tuple of str
        The global latent sites summarised.
    is_point : bool
        Whether the posterior is a point mass (its draws are all the point).
    """

    guide: Callable
    sites: tuple[str, ...]
    is_point: bool
    args: tuple = field(default=(), repr=False)
    kwargs: dict[str, Any] = field(default_factory=dict, repr=False)
    median: Callable[..., dict[str, torch.Tensor]] | None = field(default=None, repr=False)

    def point(self) -> dict[str, torch.Tensor]:
        """The point summary of every site (the median, else one draw), in its support."""
        if not self.sites:
            return {}
        with torch.no_grad():
            if self.median is not None:
                try:
                    values = self.median(*self.args, **self.kwargs)
                    return {s: values[s].detach() for s in self.sites if s in values}
                except NotImplementedError:  # a family without a median: one draw instead
                    pass
            return {s: v[0, 0] for s, v in self.draws(1).items()}

    def draws(self, num: int) -> dict[str, torch.Tensor]:
        """``num`` independent draws of each site, shaped ``(1, num, *site_shape)``."""
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"num must be a positive integer; got {num!r}")
        samples: dict[str, list[torch.Tensor]] = {s: [] for s in self.sites}
        with torch.no_grad():
            for _ in range(num):
                trace = poutine.trace(self.guide).get_trace(*self.args, **self.kwargs)
                for s in self.sites:
                    samples[s].append(trace.nodes[s]["value"].detach())
        return {s: torch.stack(v).unsqueeze(0) for s, v in samples.items()}


def _laplace(guide: AutoLaplaceApproximation, sites, args, kwargs) -> FittedPosterior:
    gaussian = guide.laplace_approximation(*args, **kwargs)
    return FittedPosterior(gaussian, sites, False, args, kwargs, gaussian.median)


def _delta(guide: AutoDelta, sites, args, kwargs) -> FittedPosterior:
    return FittedPosterior(guide, sites, True, args, kwargs, guide.median)


def _autoguide(guide: AutoGuide, sites, args, kwargs) -> FittedPosterior:
    return FittedPosterior(guide, sites, False, args, kwargs, guide.median)


#: How each guide family reads its posterior: (class, reader), the first match wins; any
#: other callable is traced.
RULES: tuple[tuple[type, Callable[..., FittedPosterior]], ...] = (
    (AutoLaplaceApproximation, _laplace),
    (AutoDelta, _delta),
    (AutoGuide, _autoguide),
)


def fitted_posterior(
    guide: Callable, sites: Sequence[str], *args: Any, **kwargs: Any
) -> FittedPosterior:
    """The fitted posterior of ``sites`` that a trained ``guide`` represents.

    Parameters
    ----------
    guide : callable
        A trained guide: one of this package's families (a Pyro autoguide) or a user's
        callable.
    sites : sequence of str
        The global latent sites to summarise (per-observation latents are left out).
    *args, **kwargs
        The model's arguments for one traced run (the data, or a small minibatch).

    Returns
    -------
    FittedPosterior

    Raises
    ------
    torch.linalg.LinAlgError
        For the Laplace family, when the trained point is not a mode (see
        :meth:`guides.laplace.LaplaceApproximation.laplace_approximation`).
    """
    if not callable(guide):
        raise ValueError(f"expected a trained guide (a callable); got {guide!r}")
    sites = tuple(sites)
    for cls, read in RULES:
        if isinstance(guide, cls):
            return read(guide, sites, args, kwargs)
    return FittedPosterior(guide, sites, False, args, kwargs)
