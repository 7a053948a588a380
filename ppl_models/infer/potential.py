r"""NUTS's potential energy from a model's closed-form collapsed posterior, without tracing.

For a model that takes the :class:`~ppl_models.models.CollapsedPosterior` role, every global
latent site :math:`\theta_s` with support :math:`S_s` is sampled in the unconstrained space
through the bijection :math:`T_s = ` ``biject_to(S_s)`` (stick-breaking for a simplex,
:math:`\exp` for positive scales, the correlation-Cholesky map of Lewandowski et al., 2009,
for ``corr_chol``), as Pyro does. The potential energy of an unconstrained point :math:`u` is

.. math::

    U(u) = -\Big[\sum_n \log \sum_k w_k f(x_n \mid \theta_k)
        + \sum_s \log p_s(T_s(u_s))
        + \sum_s \log\big|\det J_{T_s}(u_s)\big|\Big],

the labels summed out with ``logsumexp`` (:meth:`CollapsedLikelihood.log_likelihood`), the
priors' log densities (:meth:`CollapsedPosterior.global_priors`) and the transforms'
log-Jacobians: exactly the ``potential_fn`` Pyro builds from a trace of
:meth:`~ppl_models.models.CollapsedLikelihood.marginal_model`
(:func:`pyro.infer.mcmc.util.initialize_model`), without the trace, the site messages and the
per-call distribution validation. Its gradient comes from autograd, as Pyro's does.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import biject_to
from torch.distributions.transforms import Transform

from ppl_models.models import CollapsedPosterior

__all__ = ["CollapsedPotential"]


class CollapsedPotential:
    r"""Potential energy :math:`U(u)` of a collapsed model's posterior over unconstrained
    global sites (see the module docstring), callable as Pyro's ``potential_fn``.

    Parameters
    ----------
    model : CollapsedPosterior
        A model with its priors and collapsed likelihood in closed form.
    data : Tensor (N, D)
        Validated data; the potential's dtype is the data's.

    Attributes
    ----------
    sites : tuple of str
        The global latent sites, in model order.
    transforms : dict of str to Transform
        ``biject_to`` of each site's prior support: unconstrained -> constrained.
    """

    def __init__(self, model: CollapsedPosterior, data: torch.Tensor) -> None:
        if not isinstance(model, CollapsedPosterior):
            raise ValueError(
                f"a collapsed potential needs a model with a closed-form posterior "
                f"(CollapsedPosterior); got {type(model).__name__}"
            )
        self.model = model
        self.data = data
        # Built once with validation off: a prior's log_prob would otherwise check its
        # argument's support on every call (the transforms put it there by construction).
        with pyro.validation_enabled(False):
            self.priors: dict[str, dist.Distribution] = dict(model.global_priors(data))
        self.sites = tuple(self.priors)
        self.transforms: dict[str, Transform] = {
            name: biject_to(prior.support) for name, prior in self.priors.items()
        }

    def constrain(self, unconstrained: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Site values :math:`T_s(u_s)` (leading batch dimensions allowed)."""
        return {name: self.transforms[name](unconstrained[name]) for name in self.sites}

    def unconstrain(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Unconstrained points :math:`T_s^{-1}(\\theta_s)` of site values."""
        missing = [name for name in self.sites if name not in values]
        if missing:
            raise ValueError(f"values are missing the global sites {missing}")
        return {
            name: self.transforms[name].inv(torch.as_tensor(values[name], dtype=self.data.dtype))
            for name in self.sites
        }

    def log_joint(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        r""":math:`\log p(x, \theta)`: the priors' log densities and the collapsed
        log-likelihood at constrained site values."""
        total = torch.zeros((), dtype=self.data.dtype)
        for name in self.sites:
            total = total + self.priors[name].log_prob(values[name]).sum()
        with pyro.validation_enabled(False):
            log_lik = self.model.log_likelihood(self.data, dict(values))
        return total + log_lik.sum()

    def log_density(self, unconstrained: Mapping[str, torch.Tensor]) -> torch.Tensor:
        r""":math:`-U(u)`: the log joint of the constrained values plus the log-Jacobians."""
        values = {}
        jacobian = torch.zeros((), dtype=self.data.dtype)
        for name in self.sites:
            u = unconstrained[name]
            values[name] = self.transforms[name](u)
            jacobian = jacobian + self.transforms[name].log_abs_det_jacobian(u, values[name]).sum()
        return self.log_joint(values) + jacobian

    def __call__(self, unconstrained: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """:math:`U(u)` (Pyro's ``potential_fn`` signature)."""
        return -self.log_density(unconstrained)
