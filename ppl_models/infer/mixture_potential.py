r"""The potential energy of a built-in finite mixture in plain tensor operations.

:class:`~ppl_models.infer.potential.CollapsedPotential` evaluates :math:`U(u)` for any
:class:`~ppl_models.models.CollapsedPosterior` through ``torch.distributions`` objects (the
priors' ``log_prob``, the ``biject_to`` transforms, the component distribution): general, but
tens of small operations with Python in between, and opaque to ``torch.compile`` (graph breaks).
:class:`MixturePotential` writes the same function out for the built-in mixtures
(:class:`~ppl_models.models.GaussianMixture`, :class:`~ppl_models.models.StudentTMixture`, any
covariance type) with priors of the families :data:`PRIOR_FAMILIES`, on one flat vector of the
unconstrained sites, with a leading batch dimension (chains):

.. math::

    -U(u) = \sum_n \log \sum_k \exp\big(\log w_k + \log f(x_n \mid \mu_k, \Sigma_k)\big)
        + \sum_s \log p_s(T_s(u_s)) + \sum_s \log\lvert\det J_{T_s}(u_s)\rvert,

with the stick-breaking map of the simplex written through ``logsigmoid`` (so :math:`\log w`
is exact where the weights underflow), :math:`\sigma = e^{v}` for scales, the correlation
Cholesky map of Lewandowski, Kurowicka & Joe (2009) as ``torch``'s ``CorrCholeskyTransform``,
and :math:`\Sigma_k = \mathrm{diag}(\sigma_k) L_k L_k^\top \mathrm{diag}(\sigma_k)` entering
through one triangular solve, :math:`z = L_k^{-1}\,\mathrm{diag}(\sigma_k)^{-1}(x_n - \mu_k)`:
Gaussian :math:`\log f = -\tfrac12\lVert z\rVert^2 - \log\lvert\Sigma_k\rvert^{1/2} + c`,
Student-t :math:`\log f = -\tfrac{\nu + D}{2}\log(1 + \lVert z\rVert^2/\nu) -
\log\lvert\Sigma_k\rvert^{1/2} + c` (Kotz & Nadarajah, 2004). Every term that does not depend on
:math:`u` (normalising constants) is summed once at construction.

:func:`mixture_potential` returns ``None`` for anything else (another model class, a prior of
another family), and the caller keeps the generic potential. :meth:`MixturePotential.compiled`
gives the value and gradient through ``torch.compile`` (see :mod:`ppl_models.infer.compiled`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions import Independent

from ppl_models.infer.potential import CollapsedPotential
from ppl_models.models import GaussianMixture, StudentTMixture

__all__ = ["PRIOR_FAMILIES", "MixturePotential", "mixture_potential"]

#: Prior families written out in closed form (torch's classes and Pyro's wrappers of them).
PRIOR_FAMILIES = {
    "normal": (torch.distributions.Normal, dist.Normal),
    "lognormal": (torch.distributions.LogNormal, dist.LogNormal),
    "gamma": (torch.distributions.Gamma, dist.Gamma),
    "dirichlet": (torch.distributions.Dirichlet, dist.Dirichlet),
    "lkj_cholesky": (torch.distributions.LKJCholesky, dist.LKJCholesky),
}
_FAMILY_OF = {cls: name for name, classes in PRIOR_FAMILIES.items() for cls in classes}
#: The family each site's support allows (its unconstrained map is fixed by the support).
_SITE_FAMILIES = {
    "weights": ("dirichlet",),
    "locs": ("normal",),
    "scale": ("gamma", "lognormal"),
    "corr_chol": ("lkj_cholesky",),
}
_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class _Prior:
    """A site's prior family, its parameters broadcast to the site (data dtype), and the
    :math:`u`-free part of its log density (a scalar)."""

    family: str
    params: tuple[torch.Tensor, ...]
    constant: float


def _unwrap(prior):
    """The base distribution under ``Independent`` / ``expand`` wrappers (their parameters are
    broadcast to the site's shape by :func:`_closed_prior`)."""
    while isinstance(prior, Independent | dist.torch_distribution.ExpandedDistribution):
        prior = prior.base_dist
    return prior


def _closed_prior(name: str, prior, shape: torch.Size, dtype: torch.dtype) -> _Prior | None:
    base = _unwrap(prior)
    family = _FAMILY_OF.get(type(base))
    if family not in _SITE_FAMILIES.get(name, ()):
        return None
    if family in ("normal", "lognormal"):
        loc = torch.broadcast_to(base.loc.to(dtype), shape)
        scale = torch.broadcast_to(base.scale.to(dtype), shape)
        constant = float((-scale.log() - 0.5 * _LOG_2PI).sum())
        return _Prior(family, (loc, 1.0 / scale), constant)
    if family == "gamma":
        conc = torch.broadcast_to(base.concentration.to(dtype), shape)
        rate = torch.broadcast_to(base.rate.to(dtype), shape)
        constant = float((conc * rate.log() - torch.lgamma(conc)).sum())
        return _Prior(family, (conc, rate), constant)
    if family == "dirichlet":
        conc = base.concentration.to(dtype)
        if conc.shape != shape:
            return None
        constant = float(torch.lgamma(conc.sum()) - torch.lgamma(conc).sum())
        return _Prior(family, (conc,), constant)
    # LKJ Cholesky over (K, D, D): log p(L) = sum_i (2(eta - 1) + D - i) log L_ii - log Z
    k, d = shape[0], shape[-1]
    eta = torch.broadcast_to(base.concentration.to(dtype), (k,))
    if base.dim != d:
        return None
    order = torch.arange(2, d + 1, dtype=dtype)
    order = 2.0 * (eta - 1.0).unsqueeze(-1) + d - order  # (K, D - 1)
    alpha = eta + 0.5 * (d - 1)
    log_z = 0.5 * (d - 1) * math.log(math.pi) + torch.mvlgamma(alpha - 0.5, d - 1) - (
        torch.lgamma(alpha) * (d - 1)
    )
    return _Prior(family, (order,), float(-log_z.sum()))


class MixturePotential:
    r"""Potential energy :math:`U(u)` of a built-in mixture on flat unconstrained vectors
    (see the module docstring); build it with :func:`mixture_potential`.

    Parameters
    ----------
    potential : CollapsedPotential
        The generic potential of the same model and data (sites, priors, transforms).
    priors : dict of str to _Prior
        Each site's prior in closed form.

    Attributes
    ----------
    sites : tuple of str
    shapes : dict of str to torch.Size
        Each site's unconstrained shape; :meth:`pack` lays them out in ``sites`` order.
    size : int
        Length of the flat vector.
    """

    def __init__(self, potential: CollapsedPotential, priors: dict[str, _Prior]) -> None:
        model, data = potential.model, potential.data
        self.sites = potential.sites
        self.data = data
        dtype = data.dtype
        n, d = data.shape
        k = model.n_components
        self.k, self.d = k, d
        self.priors = priors
        self.shapes: dict[str, torch.Size] = {}
        self.slices: dict[str, slice] = {}
        start = 0
        for name in self.sites:
            shape = potential.transforms[name].inverse_shape(potential.priors[name].event_shape)
            size = math.prod(shape)
            self.shapes[name] = torch.Size(shape)
            self.slices[name] = slice(start, start + size)
            start += size
        self.size = start
        fixed = {
            name: value.to(dtype).expand(shape)
            for name, shape in model.site_shapes(d).items()
            if isinstance(value := model.priors.get(name), torch.Tensor)
        }
        self.fixed = fixed
        self.full = model.covariance_type == "full" and d > 1
        self.spherical = model.covariance_type == "spherical"
        self.student_df = model.df if isinstance(model, StudentTMixture) else None
        # u-free terms: priors' normalisers and the likelihood's constant
        constant = sum(prior.constant for prior in priors.values())
        if self.student_df is None:
            constant += -0.5 * n * d * _LOG_2PI
        else:
            nu = self.student_df
            log_norm = math.lgamma(0.5 * (nu + d)) - math.lgamma(0.5 * nu)
            constant += n * (log_norm - 0.5 * d * math.log(nu * math.pi))
        self.constant = constant
        if "weights" in fixed:
            self.fixed_log_weights = fixed["weights"].log()
        else:
            self.fixed_log_weights = torch.zeros(k, dtype=dtype)  # K = 1
        # stick-breaking offsets log(K - 1 - j), j = 0..K-2 (torch's StickBreakingTransform)
        self.log_offset = torch.arange(k - 1, 0, -1, dtype=dtype).log()
        if self.full:
            rows, cols = torch.tril_indices(d, d, offset=-1)
            m = rows.numel()
            select = torch.zeros(m, d * d, dtype=dtype)
            select[torch.arange(m), rows * d + cols] = 1.0
            self.tril_select = select  # unconstrained vector -> strictly lower entries
            self.eye = torch.eye(d, dtype=dtype)
            # the entries (i, j) with j <= i - 2 of the row-wise cumulative sums (torch's
            # tril_matrix_to_vec(diag=-2)): the stick-breaking Jacobian's factors
            rows2, cols2 = torch.tril_indices(d, d, offset=-2)
            self.jac_index = rows2 * d + cols2

    # ------------------------------------------------------------------ packing
    def pack(self, unconstrained: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The flat vector ``(*batch, size)`` of a dict of unconstrained site values."""
        parts = []
        for name in self.sites:
            value = unconstrained[name]
            batch = value.shape[: value.dim() - len(self.shapes[name])]
            parts.append(value.reshape(*batch, -1))
        return torch.cat(parts, -1)

    def unpack(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inverse of :meth:`pack`."""
        batch = flat.shape[:-1]
        return {
            name: flat[..., self.slices[name]].reshape(*batch, *self.shapes[name])
            for name in self.sites
        }

    # ------------------------------------------------------------------ the density
    def log_density(self, u: torch.Tensor) -> torch.Tensor:
        r""":math:`-U(u)` for flat unconstrained points ``u`` of shape ``(B, size)``;
        returns ``(B,)``."""
        b = u.shape[0]
        k, d = self.k, self.d
        total = u.new_full((b,), self.constant)
        site = {name: u[:, self.slices[name]].reshape(b, *self.shapes[name]) for name in self.sites}

        # weights: stick-breaking, log w_j = logsig(x_j) + sum_{i<j} logsig(-x_i)
        if "weights" in site:
            x = site["weights"] - self.log_offset
            log_z, log_1mz = F.logsigmoid(x), F.logsigmoid(-x)
            below = torch.cumsum(log_1mz, -1)
            log_w = torch.cat([log_z, below[:, -1:]], -1)
            log_w = log_w + F.pad(below[:, :-1], (1, 1))
            # log|J| = sum_{j < K-1} (log(1 - z_j) + log w_j)
            total = total + log_1mz.sum(-1) + log_w[:, :-1].sum(-1)
            (conc,) = self.priors["weights"].params
            total = total + ((conc - 1.0) * log_w).sum(-1)
        else:
            log_w = self.fixed_log_weights.expand(b, k)

        # locations: identity map, Normal prior
        if "locs" in site:
            locs = site["locs"]
            loc, inv_scale = self.priors["locs"].params
            total = total - 0.5 * (((locs - loc) * inv_scale) ** 2).reshape(b, -1).sum(-1)
        else:
            locs = self.fixed["locs"].expand(b, k, d)

        # scales: exp map (log|J| = v), Gamma or LogNormal prior
        if "scale" in site:
            v = site["scale"]
            scale = v.exp()
            prior = self.priors["scale"]
            if prior.family == "gamma":
                conc, rate = prior.params
                log_p = (conc - 1.0) * v - rate * scale
            else:
                loc, inv_scale = prior.params
                log_p = -0.5 * ((v - loc) * inv_scale) ** 2 - v
            total = total + (log_p + v).reshape(b, -1).sum(-1)
        else:
            scale = self.fixed["scale"].expand(b, *self.fixed["scale"].shape)
            v = scale.log()
        if self.spherical:
            scale, v = scale.unsqueeze(-1).expand(b, k, d), v.unsqueeze(-1).expand(b, k, d)

        # component densities through z = L^{-1} diag(1/s) (x - mu): (B, K, N)
        resid = (self.data - locs.unsqueeze(-2)) / scale.unsqueeze(-2)  # (B, K, N, D)
        log_det = v.sum(-1)  # (B, K)
        if self.full:
            chol = self._corr_cholesky(site, b)
            if "corr_chol" in site:
                total = total + self._corr_terms(site["corr_chol"], chol)
            diag = torch.diagonal(chol, dim1=-2, dim2=-1)
            log_det = log_det + diag.log().sum(-1)
            z = torch.linalg.solve_triangular(chol, resid.transpose(-1, -2), upper=False)
            maha = (z * z).sum(-2)
        else:
            maha = (resid * resid).sum(-1)
        if self.student_df is None:
            log_f = -0.5 * maha
        else:
            nu = self.student_df
            log_f = -0.5 * (nu + d) * torch.log1p(maha / nu)
        log_joint = log_f + (log_w - log_det).unsqueeze(-1)  # (B, K, N)
        return total + torch.logsumexp(log_joint, 1).sum(-1)

    def _corr_cholesky(self, site: dict[str, torch.Tensor], b: int) -> torch.Tensor:
        """Correlation Cholesky factors ``(B, K, D, D)`` (torch's CorrCholeskyTransform)."""
        d = self.d
        if "corr_chol" not in site:
            return self.fixed["corr_chol"].expand(b, self.k, d, d)
        eps = torch.finfo(self.data.dtype).eps
        t = torch.tanh(site["corr_chol"]).clamp(-1 + eps, 1 - eps)
        r = (t @ self.tril_select).reshape(b, self.k, d, d)
        shrink = torch.sqrt(1 - r * r).cumprod(-1)
        return (r + self.eye) * F.pad(shrink[..., :-1], (1, 0), value=1.0)

    def _corr_terms(self, x: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
        """LKJ log density (unnormalised) plus the map's log-Jacobian, summed: ``(B,)``."""
        b = x.shape[0]
        (order,) = self.priors["corr_chol"].params
        diag = torch.diagonal(chol, dim1=-2, dim2=-1)[..., 1:]
        log_p = (order * diag.log()).sum(-1)
        remaining = 1 - (chol * chol).cumsum(-1)
        stick = 0.5 * remaining.reshape(b, self.k, -1)[..., self.jac_index].log().sum(-1)
        tanh = -2.0 * (x + F.softplus(-2.0 * x) - math.log(2.0)).sum(-1)
        return (log_p + stick + tanh).sum(-1)

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        """:math:`U(u)`, shape ``(B,)``."""
        return -self.log_density(u)


def mixture_potential(potential: CollapsedPotential) -> MixturePotential | None:
    """The plain-tensor potential of ``potential``'s model and data, or ``None`` when the model
    is not a built-in mixture (exact class) or a prior is of a family not written out."""
    model = potential.model
    if type(model) not in (GaussianMixture, StudentTMixture):
        return None
    dtype = potential.data.dtype
    priors = {}
    for name in potential.sites:
        prior = potential.priors[name]
        closed = _closed_prior(name, prior, prior.batch_shape + prior.event_shape, dtype)
        if closed is None:
            return None
        priors[name] = closed
    return MixturePotential(potential, priors)
