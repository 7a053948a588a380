r"""Standard errors and Wald intervals for an EM fit: observed information, or a bootstrap.

Observed information
--------------------
At the EM optimum :math:`\hat\theta` the marginal log-likelihood (labels summed out)

.. math:: \ell(\theta) = \sum_n \log \sum_k w_k f(x_n \mid \theta_k)

is differentiated twice by automatic differentiation in the *unconstrained* parameterisation
:math:`u = T^{-1}(\theta)` of every global site, :math:`T` = ``biject_to(support)`` (stick
breaking for the weights, ``exp`` for the scales, the LKJ map for correlation Cholesky factors;
the same coordinates Pyro's guides use). Its negative Hessian is the observed information
:math:`\mathcal I(\hat u) = -\nabla^2_u \ell(\hat u)`, and (Louis, 1982; McLachlan & Krishnan,
2008, ch. 4) asymptotically :math:`\hat u \approx \mathcal N(u, \mathcal I^{-1})`. Every reported
quantity :math:`g` (weights, locations, scales, correlation Cholesky entries and covariances)
gets, by the delta method,

.. math:: \operatorname{se}(g) = \sqrt{\operatorname{diag}\left(J \mathcal I^{-1} J^\top\right)},
    \qquad J = \partial g / \partial u \text{ at } \hat u,

and the Wald interval :math:`g \pm z_{1-\alpha/2} \operatorname{se}(g)`. Both are
*asymptotic*: they need many observations per component and an optimum away from the boundary.
They are not to be trusted when a weight is near 0 or a component near collapse; the
information matrix is then (near) singular and this module says so. For a MAP fit the log
prior is added (a Laplace approximation of the posterior).

Parametric bootstrap
--------------------
``B`` data sets of the same size are simulated from the fitted mixture, each is refitted by
EM starting at :math:`\hat\theta`, the refitted components are matched to the original ones
(Hungarian assignment on the locations, so label switching does not inflate the spread), and
the standard error is the standard deviation over refits, the interval the percentile
interval (Efron & Tibshirani, 1993). Better than the Wald interval in small samples, ``B``
times the cost of a fit.

References
----------
Louis, T. A. (1982). Finding the observed information matrix when using the EM algorithm.
JRSS B 44(2), 226-233.
McLachlan, G. J. & Krishnan, T. (2008). The EM Algorithm and Extensions, 2nd ed. Wiley.
Efron, B. & Tibshirani, R. J. (1993). An Introduction to the Bootstrap. Chapman & Hall.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch.distributions import biject_to

from ppl_models.models.mixture import FiniteMixture

__all__ = ["METHODS", "StandardErrors", "compute_standard_errors", "standard_errors"]

METHODS = ("observed_information", "bootstrap")

#: Condition number of the information matrix beyond which Wald intervals are flagged.
_MAX_CONDITION = 1e10
#: Observations' worth of weight below which a component's intervals are flagged.
_MIN_COMPONENT_COUNT = 10.0


@dataclass
class StandardErrors:
    """Standard errors and intervals of every reported parameter.

    Attributes
    ----------
    sites : dict
        ``{name: {"estimate", "se", "lower", "upper"}}``, tensors of the parameter's shape,
        for each fitted site and ``covariances``.
    method : str
        ``observed_information`` (Wald intervals) or ``bootstrap`` (percentile intervals).
    level : float
        Coverage the intervals aim at.
    warnings : list of str
        Why the intervals may not be trusted (empty when nothing was found).
    condition_number : float or None
        Of the observed information matrix (``None`` for the bootstrap).
    n_boot : int or None
        Refits that succeeded (bootstrap only).
    """

    sites: dict[str, dict[str, torch.Tensor]]
    method: str
    level: float
    warnings: list[str] = field(default_factory=list)
    condition_number: float | None = None
    n_boot: int | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (nested lists; a NaN becomes ``None``)."""

        def plain(t: torch.Tensor) -> Any:
            values = t.detach().cpu().double().tolist()
            return _nan_to_none(values)

        note = (
            "asymptotic (Wald) intervals from the observed information and the delta method"
            if self.method == "observed_information"
            else "parametric bootstrap: standard deviation and percentile interval over refits"
        )
        return {
            "method": self.method,
            "level": self.level,
            "asymptotic": self.method == "observed_information",
            "note": note,
            "condition_number": _nan_to_none(self.condition_number),
            "n_boot": self.n_boot,
            "warnings": list(self.warnings),
            "sites": {
                name: {key: plain(value) for key, value in table.items()}
                for name, table in self.sites.items()
            },
        }


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ------------------------------------------------------------------------------ shared
def _fitted_sites(result) -> list[str]:
    model, params = result.model, result.params
    d = result.data.shape[1]
    return [name for name in model.global_sites(d) if name in params]


def _reported(model, params: Mapping[str, torch.Tensor], d: int) -> dict[str, torch.Tensor]:
    """The reported quantities: the fitted sites and the covariances."""
    out = {name: value for name, value in params.items()}
    full = model.full_params(params, d)
    out["covariances"] = model.covariances(full)
    return out


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def _check(result, level: float) -> None:
    if not isinstance(result.model, FiniteMixture):
        raise ValueError(
            f"standard errors need a finite mixture; got {type(result.model).__name__}"
        )
    if result.method != "em":
        raise ValueError(f"standard errors need an EM fit; got a {result.method!r} fit")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level}")


def _weight_warnings(model, params, n: int) -> list[str]:
    weights = model.full_params(params, params["locs"].shape[-1])["weights"]
    small = [int(k) for k in torch.nonzero(weights * n < _MIN_COMPONENT_COUNT).flatten()]
    if not small:
        return []
    return [
        f"component(s) {small} hold fewer than {_MIN_COMPONENT_COUNT:g} observations' worth of "
        "weight: their intervals are not to be trusted (weights near 0)"
    ]


# ------------------------------------------------------------------ observed information
def _observed_information(result, level: float) -> StandardErrors:
    model, data = result.model, result.data
    d = data.shape[1]
    names = _fitted_sites(result)
    specs = model.site_specs()
    transforms = {name: biject_to(specs[name].domain) for name in names}
    with torch.no_grad():
        free = {name: transforms[name].inv(result.params[name].to(data.dtype)) for name in names}
    shapes = {name: free[name].shape for name in names}
    sizes = [math.prod(shapes[name]) for name in names]
    theta = torch.cat([free[name].reshape(-1) for name in names])
    is_map = result.info.get("objective") == "map"

    def unpack(flat: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = flat.split(sizes)
        return {
            name: transforms[name](part.reshape(shapes[name]))
            for name, part in zip(names, parts, strict=True)
        }

    def objective(flat: torch.Tensor) -> torch.Tensor:
        params = unpack(flat)
        total = model.log_likelihood(data, params).sum()
        if is_map:
            total = total + model.log_prior(params, data)
        return total

    info = -_hessian(objective, theta)
    info = 0.5 * (info + info.T)
    notes = _weight_warnings(model, result.params, data.shape[0])
    cov_u, condition = _inverse_information(info, notes)

    reported_shapes: dict[str, torch.Size] = {}

    def reported_flat(flat: torch.Tensor) -> torch.Tensor:
        values = _reported(model, unpack(flat), d)
        for name, value in values.items():
            reported_shapes[name] = value.shape
        return torch.cat([value.reshape(-1) for value in values.values()])

    jac = torch.autograd.functional.jacobian(reported_flat, theta)
    with torch.no_grad():
        estimate = reported_flat(theta)
        variance = ((jac @ cov_u) * jac).sum(1)
        se = variance.clamp(min=0.0).sqrt()
    z = _z(level)
    sites = _split(estimate, se, estimate - z * se, estimate + z * se, reported_shapes)
    return StandardErrors(sites, "observed_information", level, notes, condition)


def _inverse_information(info: torch.Tensor, notes: list[str]) -> tuple[torch.Tensor, float]:
    """``info``'s inverse and condition number; NaN (and a note) when it is not positive
    definite, a note when it is near-singular."""
    nan = torch.full_like(info, math.nan)
    if not torch.isfinite(info).all():
        notes.append("the observed information matrix is not finite: no standard errors")
        return nan, math.nan
    eigen = torch.linalg.eigvalsh(info)
    chol, failed = torch.linalg.cholesky_ex(info)
    if not eigen[0] > 0 or failed:
        notes.append(
            "the observed information matrix is not positive definite (smallest eigenvalue "
            f"{float(eigen[0]):.3g}): not at a maximum, or a component collapsed; no standard "
            "errors"
        )
        return nan, math.inf
    condition = float(eigen[-1] / eigen[0])
    if condition > _MAX_CONDITION:
        notes.append(
            f"the observed information matrix is near-singular (condition number "
            f"{condition:.3g}): components near collapse or weights near 0; the Wald "
            "intervals are not to be trusted"
        )
    return torch.cholesky_inverse(chol), condition


def _hessian(f: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> torch.Tensor:
    """Hessian of a scalar function by double backward, one row per parameter."""
    x = theta.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        grad = torch.autograd.grad(f(x), x, create_graph=True)[0]
        rows = []
        for i in range(x.numel()):
            (row,) = torch.autograd.grad(grad[i], x, retain_graph=i + 1 < x.numel())
            rows.append(row)
    return torch.stack(rows).detach()


def _split(estimate, se, lower, upper, shapes: Mapping[str, torch.Size]):
    sites: dict[str, dict[str, torch.Tensor]] = {}
    offset = 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        piece = slice(offset, offset + size)
        sites[name] = {
            "estimate": estimate[piece].reshape(shape),
            "se": se[piece].reshape(shape),
            "lower": lower[piece].reshape(shape),
            "upper": upper[piece].reshape(shape),
        }
        offset += size
    return sites


# --------------------------------------------------------------------------- bootstrap
def simulate(model, params: Mapping[str, torch.Tensor], n: int) -> torch.Tensor:
    """``n`` observations from a fitted mixture (torch's global random state)."""
    d = params["locs"].shape[-1]
    full = model.full_params(params, d)
    labels = torch.distributions.Categorical(full["weights"]).sample((n,))
    chosen = {name: value[labels] for name, value in full.items() if name != "weights"}
    return model.component_distribution(chosen).sample()


def _align(reference: torch.Tensor, locs: torch.Tensor) -> torch.Tensor:
    """Permutation of ``locs``'s components that best matches ``reference`` (Hungarian)."""
    cost = torch.cdist(reference, locs).square().cpu().numpy()
    _, order = linear_sum_assignment(cost)
    return torch.as_tensor(order)


def _bootstrap(result, level: float, n_boot: int, seed: int) -> StandardErrors:
    # Imported here: em.py imports this module to store standard errors in its result.
    from ppl_models.infer.em import fit_em

    model, data, params = result.model, result.data, result.params
    n, d = data.shape
    names = _fitted_sites(result)
    info = result.info
    options = {
        "tol": info.get("tol", 1e-3),
        "reg_covar": info.get("reg_covar", 1e-6),
        "reg_covar_mode": info.get("reg_covar_mode", "relative"),
        "objective": info.get("objective", "auto"),
        "m_step": info.get("m_step", "auto"),
    }
    start = {name: params[name] for name in names}
    draws: list[torch.Tensor] = []
    shapes: dict[str, torch.Size] = {}
    failed = 0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for b in range(n_boot):
            x = simulate(model, params, n)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    refit = fit_em(
                        model, x, init=start, n_init=1, seed=seed + b, progress=False,
                        standard_errors=False, **options,
                    )
                except ValueError:
                    failed += 1
                    continue
            values = _reported(model, refit.params, d)
            if "weights" in values or model.n_components > 1:
                order = _align(params["locs"], refit.params["locs"])
                values = {name: value[order] for name, value in values.items()}
            shapes = {name: value.shape for name, value in values.items()}
            draws.append(torch.cat([value.reshape(-1) for value in values.values()]))
    if len(draws) < 2:
        raise ValueError(f"the bootstrap needs at least 2 successful refits; got {len(draws)}")
    stacked = torch.stack(draws)
    estimate_values = _reported(model, params, d)
    estimate = torch.cat([value.reshape(-1) for value in estimate_values.values()])
    alpha = 1.0 - level
    quantiles = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=stacked.dtype)
    lower, upper = torch.quantile(stacked, quantiles, dim=0)
    se = stacked.std(0)
    notes = _weight_warnings(model, params, n)
    if failed:
        notes.append(f"{failed} of {n_boot} bootstrap refits failed and were left out")
    sites = _split(estimate, se, lower, upper, shapes)
    return StandardErrors(sites, "bootstrap", level, notes, None, len(draws))


# ------------------------------------------------------------------------------ public
def compute_standard_errors(
    result,
    method: str = "observed_information",
    *,
    level: float = 0.95,
    n_boot: int = 200,
    seed: int = 0,
) -> StandardErrors:
    """Standard errors of an EM fit, without warning (the reasons are in ``.warnings``).

    See :func:`standard_errors` for the parameters.
    """
    _check(result, level)
    if method == "observed_information":
        return _observed_information(result, level)
    if method == "bootstrap":
        if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 2:
            raise ValueError(f"n_boot must be an integer of at least 2; got {n_boot!r}")
        return _bootstrap(result, level, n_boot, seed)
    raise ValueError(f"method must be one of {METHODS}; got {method!r}")


def standard_errors(
    result,
    method: str = "observed_information",
    *,
    level: float = 0.95,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, dict[str, torch.Tensor]]:
    """Standard errors and intervals of every parameter an EM fit reports.

    Parameters
    ----------
    result : FitResult
        From :func:`~ppl_models.infer.fit_em` on a finite mixture.
    method : {"observed_information", "bootstrap"}
        Asymptotic Wald intervals from the observed information (delta method), or a
        parametric bootstrap of ``n_boot`` refits (percentile intervals).
    level : float
        Coverage of the intervals.
    n_boot : int
        Bootstrap refits.
    seed : int
        Seed of the bootstrap's simulations.

    Returns
    -------
    dict
        ``{name: {"estimate", "se", "lower", "upper"}}`` for every fitted site and for
        ``covariances``, each a tensor of the parameter's shape.

    Warns
    -----
    UserWarning
        When the intervals are not to be trusted: a (near-)singular information matrix,
        weights near 0, failed bootstrap refits.
    """
    errors = compute_standard_errors(result, method, level=level, n_boot=n_boot, seed=seed)
    for note in errors.warnings:
        warnings.warn(note, UserWarning, stacklevel=2)
    return errors.sites
