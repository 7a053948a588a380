r"""The collapsed ELBO of a closed-form model for Pyro's autoguides, without tracing the model.

For a model with its posterior in closed form (:class:`~ppl_models.models.CollapsedPosterior`)
and a guide :math:`q(u)` over the unconstrained global sites, the ELBO with the labels summed
out is

.. math::

    \mathcal L(q) = \mathbb E_{u \sim q}\big[\log p(x, T(u)) + \log\lvert\det J_T(u)\rvert
        - \log q(u)\big] = \mathbb E_{u \sim q}\big[-U(u) - \log q(u)\big],

with :math:`U` the potential energy of :class:`~ppl_models.infer.potential.CollapsedPotential`
(Kucukelbir et al., 2017, "Automatic differentiation variational inference", JMLR). Per draw
this is exactly what ``TraceEnum_ELBO`` computes from a trace of the guide and an enumerated
trace of the model (its guide sites carry :math:`-\log|\det J_T|` as their log density), so the
same draws give the same loss and gradients; only the traces are skipped. A point-mass guide
(``AutoDelta``, which holds the constrained value and has no Jacobian term) scores
:math:`\log p(x, \theta)`. The guide draws its noise in the order Pyro's would (site by site
for ``AutoNormal``, one joint draw for the ``AutoContinuous`` family).

Guides served: ``AutoDelta`` (``map``), ``AutoNormal`` (``mean_field``) and every
``AutoContinuous`` (``full_rank``, ``low_rank``, ``flow``, ``laplace`` while fitting);
:func:`supports_guide` says which.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro.infer.autoguide import AutoContinuous, AutoDelta, AutoNormal
from pyro.infer.util import torch_item
from pyro.nn import pyro_method

from ppl_models.infer.potential import CollapsedPotential

__all__ = ["CollapsedELBO", "supports_guide"]

_GUIDES = (AutoDelta, AutoNormal, AutoContinuous)


def supports_guide(guide: Any) -> bool:
    """Whether :class:`CollapsedELBO` computes the ELBO of ``guide`` (a Pyro autoguide of
    one of the served families)."""
    return isinstance(guide, _GUIDES)


@pyro_method  # the guide's parameters are read as Pyro params, so SVI.step optimises them
def _log_weight(
    guide: Any,
    potential: CollapsedPotential,
    args: tuple,
    kwargs: dict,
    energy: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
) -> torch.Tensor:
    """:math:`\\log p(x, T(u)) + \\log|J| - \\log q(u)` for one draw :math:`u \\sim q`;
    :math:`\\log p(x, T(u)) + \\log|J| = -U(u)` from ``energy`` when given."""
    log_density = potential.log_density if energy is None else (lambda u: -energy(u))
    if isinstance(guide, AutoDelta):
        values = {name: getattr(guide, name) for name in potential.sites}
        return potential.log_joint(values)
    if isinstance(guide, AutoNormal):
        log_q = torch.zeros((), dtype=potential.data.dtype)
        point = {}
        for name in potential.sites:
            loc = getattr(guide.locs, name)
            scale = getattr(guide.scales, name)
            normal = torch.distributions.Normal(loc, scale)
            u = normal.rsample()  # the noise Pyro's AutoNormal would draw
            point[name] = u
            log_q = log_q + normal.log_prob(u).sum()
        return log_density(point) - log_q
    if isinstance(guide, AutoContinuous):
        posterior = guide.get_posterior(*args, **kwargs)
        latent = posterior.rsample()
        point = {site["name"]: u for site, u in guide._unpack_latent(latent)}
        return log_density(point) - posterior.log_prob(latent)
    raise ValueError(
        f"the collapsed ELBO serves AutoDelta, AutoNormal and AutoContinuous guides; got "
        f"{type(guide).__name__} (use TraceEnum_ELBO)"
    )


class CollapsedELBO:
    r"""A Pyro loss (``loss`` / ``loss_and_grads``, given to ``SVI`` as its ``loss`` and
    ``loss_and_grads``) computing
    :math:`-\mathcal L(q)` from the closed form (see the module docstring).

    Parameters
    ----------
    potential : CollapsedPotential
        The model's potential energy on its data.
    num_particles : int
        Draws averaged per estimate (one after the other, as ``TraceEnum_ELBO``'s default).
    energy : callable, optional
        The same potential energy :math:`U` in a faster form, ``dict of unconstrained site
        values -> U`` differentiable in them (a
        :class:`~ppl_models.infer.compiled_potential.NUTSPotential`, eager or compiled); used
        for every guide but ``AutoDelta`` (which scores constrained values).
    """

    def __init__(
        self,
        potential: CollapsedPotential,
        num_particles: int = 1,
        energy: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
    ) -> None:
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or (
            num_particles < 1
        ):
            raise ValueError(f"num_particles must be a positive integer; got {num_particles!r}")
        self.potential = potential
        self.num_particles = num_particles
        self.energy = energy
        self._checked = False

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any):
        """:math:`-\\mathcal L(q)` estimated from ``num_particles`` draws, with its graph."""
        if guide.prototype_trace is None:  # an autoguide sets itself up at its first call
            guide(*args, **kwargs)
        if not self._checked:
            sites = tuple(name for name, _ in guide.prototype_trace.iter_stochastic_nodes())
            if set(sites) != set(self.potential.sites):
                raise ValueError(
                    f"the guide covers the sites {list(sites)} but the model's global latent "
                    f"sites are {list(self.potential.sites)}"
                )
            self._checked = True
        draws = range(self.num_particles)
        total = sum(
            _log_weight(guide, self.potential, args, kwargs, self.energy) for _ in draws
        )
        return -total / self.num_particles

    def loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        """:math:`-\\mathcal L(q)` (no gradients)."""
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        """:math:`-\\mathcal L(q)`, its gradient accumulated into the guide's parameters."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return torch_item(loss)
