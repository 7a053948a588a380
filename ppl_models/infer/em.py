r"""Expectation-maximisation for models with one enumerated discrete latent.

The E-step is exact: the label's posterior :math:`r_{nk} = p(z_n = k \mid x_n, \theta)` is
computed by enumerating the label (the model's closed form when it has one, otherwise Pyro's
parallel enumeration of the model). The M-step maximises the expected complete-data log joint

.. math:: Q(\theta) = \sum_n \sum_k r_{nk} \log p(x_n, z_n = k \mid \theta)
    \; [+ \log p(\theta) \text{ for MAP}]

in closed form where the model provides one (the :class:`~ppl_models.models.ClosedFormEM`
hooks), otherwise numerically
(L-BFGS in the sites' unconstrained space, starting from the current value and accepted only
if :math:`Q` rises, so the objective never decreases: a generalised EM, Dempster, Laird &
Rubin 1977). Restarts keep the best optimum; a final E-step makes the labels match the
parameters returned.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to
from tqdm.auto import tqdm

import guides
from ppl_models._shared.checks import check_float, check_int
from ppl_models._shared.progress import show_progress
from ppl_models.data import check_data
from ppl_models.infer.kmeans import cluster_moments, kmeans_labels, kmeans_responsibilities
from ppl_models.infer.regularisation import (
    check_resolution,
    collapse_causes,
    feature_variance,
    moment_covariances,
    reg_covar_per_feature,
)
from ppl_models.infer.result import FitResult
from ppl_models.infer.standard_errors import compute_standard_errors
from ppl_models.models import ClosedFormEM, FiniteMixture, LatentModel, MixtureModel
from ppl_models.models.gmm import EMData, GaussianMixture

__all__ = ["fit_em", "kmeans_plus_plus"]

#: Retries of a k-means restart whose fit collapsed a component.
_COLLAPSE_RETRIES = 2

#: Relative slack below which a drop of the objective counts as round-off, not a violation.
_MONOTONE_SLACK = 1e-9


class _NoBar:
    """Stands in for a disabled progress bar (creating a tqdm bar costs a fit of 10,000 x 10
    a few percent)."""

    disable = True

    def update(self, n: int = 1) -> None:
        """Nothing to show."""

    def set_postfix(self, **kwargs: Any) -> None:
        """Nothing to show."""


_NO_BAR = _NoBar()


@dataclass
class _Run:
    params: dict[str, torch.Tensor]
    history: list[float]
    log_likelihood: list[float]
    converged: bool
    n_iter: int
    objective: float
    total_log_likelihood: float = math.nan  # at ``params``, labels summed out
    notes: list[str] = field(default_factory=list)
    monotone_violations: int = 0
    iteration_seconds: list[float] = field(default_factory=list)  # EM by blocks reports them


def kmeans_plus_plus(data: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Hard responsibilities ``(N, K)`` from k-means++ seeding (Arthur & Vassilvitskii, 2007).

    Centres are drawn one at a time with probability proportional to the squared distance to
    the nearest centre chosen so far; each point is then assigned to its nearest centre (as
    scikit-learn's ``init_params="k-means++"``).
    """
    n = data.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [data[first]]
    nearest = (data - data[first]).square().sum(1)
    for _ in range(1, k):
        total = nearest.sum()
        if total <= 0:
            idx = int(torch.randint(n, (1,), generator=generator))
        else:
            idx = int(torch.multinomial(nearest / total, 1, generator=generator))
        centres.append(data[idx])
        nearest = torch.minimum(nearest, (data - data[idx]).square().sum(1))
    dist2 = torch.cdist(data, torch.stack(centres)).square()
    resp = torch.zeros(n, k, dtype=data.dtype)
    resp[torch.arange(n), dist2.argmin(1)] = 1.0
    return resp


# --------------------------------------------------------------------------- engines
class _ClosedForm:
    """EM through the model's public hooks (:class:`~ppl_models.models.ClosedFormEM`), on
    data it prepares once per fit, in its own form of the state."""

    name = "closed_form"
    map = False

    def __init__(
        self,
        model: ClosedFormEM,
        data: torch.Tensor,
        reg_covar: float,
        *,
        data_var: torch.Tensor | None = None,
    ) -> None:
        self.model, self.data, self.reg_covar = model, data, reg_covar
        self.data_var = data_var  # each feature's variance, if known already
        self._prepared = model.em_prepare(data)

    def from_resp(self, resp: torch.Tensor):
        return self.model.m_step(self.data, resp, reg_covar=self.reg_covar)

    def from_params(self, params: Mapping[str, torch.Tensor]):
        _require_sites(params, self.model.global_sites(self.data.shape[1]))
        return self.model.em_state(params)

    def kmeans_labels(self, k: int, generator: torch.Generator) -> torch.Tensor:
        """The k-means start's labels (:func:`~ppl_models.infer.kmeans.kmeans_labels`), on
        the prepared centred data when the model has them (the same values, not centred
        again)."""
        prepared = self._prepared
        if isinstance(prepared, EMData) and prepared.features is not None:
            return kmeans_labels(prepared.centred(), k, generator, centred=True)
        return kmeans_labels(self.data, k, generator)

    def from_labels(self, labels: torch.Tensor, k: int):
        """The M-step from hard clusters (a k-means start): a Gaussian mixture's from its
        prepared features, else each cluster's own moments."""
        if isinstance(self.model, GaussianMixture):
            state = self.model.em_start_from_labels(self._prepared, labels, self.reg_covar)
            if state is not None:
                return state
        w, mu, cov = cluster_moments(self.data, labels, k, self.reg_covar)
        return self.from_params(self.model.site_params_from_moments(w, mu, cov))

    def iterate(self, state) -> tuple[float, float, dict[str, torch.Tensor]]:
        """Total log-likelihood and log prior (0: maximum likelihood) at ``state``, and the
        next state."""
        ll, new = self.model.em_iteration(self._prepared, state, self.reg_covar)
        return ll, 0.0, new

    def evaluate(self, state) -> tuple[float, float]:
        """Total log-likelihood and log prior (0) at ``state``."""
        return self.model.em_log_likelihood(self._prepared, state), 0.0

    def params(self, state) -> dict[str, torch.Tensor]:
        return self.model.em_params(state)

    def notes(self, state, params: Mapping[str, torch.Tensor] | None = None) -> list[str]:
        """Collapse warnings at ``state`` (``params``: its site values, if known already)."""
        if isinstance(self.model, GaussianMixture) and self.model.covariance_type == "full":
            # The state holds the covariances and weights already (no site round trip).
            n, d = self.data.shape
            return collapse_causes(
                state["covariances"],
                state["weights"],
                n,
                torch.as_tensor(self.reg_covar, dtype=self.data.dtype).expand(d),
                held=True,
                data_var=feature_variance(self.data) if self.data_var is None else self.data_var,
            )
        params = self.params(state) if params is None else params
        return _collapse_notes(self.model, params, self.data, self.reg_covar, True, self.data_var)


class _Generic:
    """EM for any Pyro model with one enumerated site, through Pyro's enumeration."""

    name = "generic"

    def __init__(
        self,
        model,
        data: torch.Tensor,
        objective: str,
        reg_covar: float,
        inner_steps: int,
        *,
        data_var: torch.Tensor | None = None,
    ) -> None:
        self.model, self.data = model, data
        self.data_var = data_var  # each feature's variance, if known already
        self.model_fn: Callable = guides.model_callable(model)
        self.map = objective == "map"
        self.reg_covar = reg_covar
        self.inner_steps = inner_steps
        self.max_plate_nesting = model.max_plate_nesting if isinstance(model, LatentModel) else 1
        self.supports = guides.global_latent_supports(model, data)
        if not self.supports:
            raise ValueError("EM needs at least one global latent site to optimise")

    # A state is the dict of global site values.
    def from_resp(self, resp: torch.Tensor) -> dict[str, torch.Tensor]:
        if not isinstance(self.model, MixtureModel):
            raise ValueError(
                "this model has no initial_params(data, resp) hook: pass init={site: value} "
                f"for its global sites {sorted(self.supports)}"
            )
        start = self.model.initial_params(self.data, resp, self.reg_covar)
        return {k: v for k, v in start.items() if k in self.supports}

    def from_params(self, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        _require_sites(params, self.supports)
        return {k: torch.as_tensor(params[k], dtype=self.data.dtype) for k in self.supports}

    def log_joint(self, state: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K, N)`` local log joint per label value, and the log prior of the globals."""
        conditioned = poutine.condition(self.model_fn, data=dict(state))
        enumerated = poutine.enum(
            config_enumerate(conditioned, default="parallel"),
            first_available_dim=-1 - self.max_plate_nesting,
        )
        trace = poutine.trace(enumerated).get_trace(self.data)
        trace.compute_log_prob()
        local = torch.zeros((), dtype=self.data.dtype)
        prior = torch.zeros((), dtype=self.data.dtype)
        n_enumerated = 0
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if name in self.supports:
                prior = prior + site["log_prob_sum"]
                continue
            if site["infer"].get("_enumerate_dim") is not None:
                n_enumerated += 1
            local = local + site["log_prob"]
        if n_enumerated != 1 or local.dim() != 2:
            raise ValueError(
                "generic EM handles models with exactly one enumerated discrete site inside one "
                f"plate; this model has {n_enumerated} and a local log density of shape "
                f"{tuple(local.shape)}"
            )
        return local, prior

    def e_step(self, state) -> tuple[torch.Tensor, torch.Tensor, float]:
        with torch.no_grad():
            local, prior = self.log_joint(state)
        log_norm = local.logsumexp(0)
        return (local - log_norm).T, log_norm, float(prior)

    def _q(self, state, resp_t: torch.Tensor) -> torch.Tensor:
        local, prior = self.log_joint(state)
        q = (resp_t * local).sum()
        return q + prior if self.map else q

    def m_step(self, state, resp: torch.Tensor) -> dict[str, torch.Tensor]:
        resp_t = resp.T.detach()
        transforms = {k: biject_to(s) for k, s in self.supports.items()}
        free = {
            k: transforms[k].inv(v).detach().clone().requires_grad_(True) for k, v in state.items()
        }

        def constrained() -> dict[str, torch.Tensor]:
            return {k: transforms[k](u) for k, u in free.items()}

        with torch.no_grad():
            q_old = float(self._q(state, resp_t))
        optimiser = torch.optim.LBFGS(
            list(free.values()),
            max_iter=self.inner_steps,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-9,
            tolerance_change=1e-12,
        )

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            loss = -self._q(constrained(), resp_t)
            loss.backward()
            return loss

        # A line search may try values whose densities over- or underflow (a collapsing
        # component): such a step is rejected below, so validation must not raise first.
        with pyro.validation_enabled(False), torch.no_grad():
            try:
                with torch.enable_grad():
                    optimiser.step(closure)
                new = {k: v.detach() for k, v in constrained().items()}
                q_new = float(self._q(new, resp_t))
            except (ValueError, RuntimeError):  # a non-finite parameter broke a distribution
                return dict(state)
        if not math.isfinite(q_new) or q_new < q_old:
            return dict(state)
        return new

    def iterate(self, state) -> tuple[float, float, dict[str, torch.Tensor]]:
        """Total log-likelihood and log prior at ``state``, and the next state."""
        log_resp, log_norm, log_prior = self.e_step(state)
        return float(log_norm.sum()), log_prior, self.m_step(state, log_resp.exp())

    def evaluate(self, state) -> tuple[float, float]:
        """Total log-likelihood and log prior at ``state``."""
        _, log_norm, log_prior = self.e_step(state)
        return float(log_norm.sum()), log_prior

    def params(self, state) -> dict[str, torch.Tensor]:
        return dict(state)

    def notes(self, state, params: Mapping[str, torch.Tensor] | None = None) -> list[str]:
        """Collapse warnings at ``state`` (its site values)."""
        return _collapse_notes(self.model, state, self.data, self.reg_covar, False, self.data_var)


def _require_sites(params: Mapping[str, Any], required) -> None:
    missing = sorted(set(required) - set(params))
    if missing:
        raise ValueError(f"init is missing the global site(s) {missing}")


def _collapse_notes(
    model, params, data: torch.Tensor, reg_covar, held: bool, data_var=None
) -> list[str]:
    """Warnings for components that collapsed, naming the cause found (mixtures only);
    ``data_var``: each feature's variance (computed here if not given)."""
    if not isinstance(model, FiniteMixture):
        return []
    full = model.full_params(params, data.shape[1])
    reg = torch.as_tensor(reg_covar, dtype=data.dtype).expand(data.shape[1])
    return collapse_causes(
        moment_covariances(model, params),
        full["weights"],
        data.shape[0],
        reg,
        held=held,
        data_var=feature_variance(data) if data_var is None else data_var,
    )


def _collapsed(run: _Run) -> bool:
    return any("collapsed" in note for note in run.notes)


# --------------------------------------------------------------------------- driver
def _best_finite_run(runs: Sequence[_Run]) -> _Run:
    """The restart with the highest finite objective (ValueError when none is finite)."""
    finite = [r for r in runs if math.isfinite(r.objective)]
    if not finite:
        raise ValueError(
            "every EM restart ended with a non-finite log-likelihood: the data are too extreme "
            "for this model (try fewer components, or rescale the data)"
        )
    return max(finite, key=lambda r: r.objective)


def _fit_notes(best: _Run, max_iter: int, tol: float, round_off: str) -> list[str]:
    """The best run's notes, plus non-convergence and objective decreases (``round_off``
    says when a decrease is only round-off)."""
    notes = list(best.notes)
    if not best.converged:
        notes.append(f"EM did not converge within max_iter={max_iter} (tol={tol:g})")
    if best.monotone_violations:
        notes.append(f"the objective decreased {best.monotone_violations} time(s); {round_off}")
    return notes


def _likelihood_criteria(total_ll: float, n: int, n_params: int) -> dict[str, float]:
    """Log-likelihood (total and per observation), free parameters, BIC and AIC."""
    return {
        "log_likelihood": total_ll,
        "mean_log_likelihood": total_ll / n,
        "n_parameters": n_params,
        "bic": -2.0 * total_ll + n_params * math.log(n),
        "aic": -2.0 * total_ll + 2.0 * n_params,
    }


def _count_parameters(model, params: Mapping[str, torch.Tensor], data: torch.Tensor) -> int:
    """Free parameters: the unconstrained dimension of every global site that was fitted.

    Supports come from a mixture's declared site domains, or else from one traced run of the
    model on two rows (a global site's support does not depend on N; a traced run on every row
    cost a third of a 10,000 x 10 fit)."""
    if isinstance(model, FiniteMixture):
        specs = model.site_specs()
        supports = {name: specs[name].domain for name in model.global_sites(data.shape[1])}
    else:
        supports = guides.global_latent_supports(model, data[: min(2, data.shape[0])])
    total = 0
    for name, value in params.items():
        support = supports.get(name)
        if support is None:
            total += value.numel()
            continue
        total += _free_size(support, tuple(value.shape))
    return total


@functools.lru_cache(maxsize=256)
def _free_size(support, shape: tuple[int, ...]) -> int:
    """Unconstrained dimension of a site of this support and shape (a transform built once)."""
    return math.prod(biject_to(support).inverse_shape(torch.Size(shape)))


def _resolve_objective(model, objective: str) -> str:
    if objective not in ("auto", "ml", "map"):
        raise ValueError(f"objective must be 'auto', 'ml' or 'map'; got {objective!r}")
    if objective != "auto":
        return objective
    # (a mixture class first: a Protocol's isinstance walks its members, ~20 us a call)
    latent = isinstance(model, FiniteMixture) or isinstance(model, LatentModel)
    priors = model.priors if latent else {}
    return "map" if any(not isinstance(p, torch.Tensor) for p in priors.values()) else "ml"


def _initial_state(engine, init, data: torch.Tensor, k: int, generator: torch.Generator):
    if isinstance(init, Mapping):
        params = {name: torch.as_tensor(v, dtype=data.dtype) for name, v in init.items()}
        if "covariances" in params and isinstance(engine.model, FiniteMixture):
            params = engine.model.site_params_from_moments(
                params["weights"], params["locs"], params["covariances"]
            )
        return engine.from_params(params)
    if k is None:
        raise ValueError(
            f"init={init!r} needs a mixture (n_components, initial_params); pass "
            "init={site: value} for the model's global sites"
        )
    if init == "kmeans" and isinstance(engine, _ClosedForm):  # no (N, K) responsibilities
        return engine.from_labels(engine.kmeans_labels(k, generator), k)
    if init == "kmeans":
        return engine.from_resp(kmeans_responsibilities(data, k, generator))
    if init == "kmeans++":
        return engine.from_resp(kmeans_plus_plus(data, k, generator))
    if init == "random":
        flat = torch.ones(k, dtype=data.dtype)
        resp = torch.distributions.Dirichlet(flat).sample((data.shape[0],))
        return engine.from_resp(resp)
    raise ValueError(
        f"init must be 'kmeans', 'kmeans++', 'random' or a dict of values; got {init!r}"
    )


def _run(engine, state, n: int, max_iter: int, tol: float, progress) -> _Run:
    history: list[float] = []
    log_lik: list[float] = []
    violations = 0
    converged = False
    previous = -math.inf
    n_iter = 0
    is_map = engine.map
    show = not progress.disable
    for n_iter in range(1, max_iter + 1):  # noqa: B007 (reported below)
        # E-step at ``state`` then M-step, before the convergence test, as scikit-learn: the
        # parameters returned are one update past the last objective compared.
        ll, log_prior, new_state = engine.iterate(state)
        value = (ll + (log_prior if is_map else 0.0)) / n
        history.append(value)
        log_lik.append(ll / n)
        if value < previous - _MONOTONE_SLACK * max(1.0, abs(previous)):
            violations += 1
        if show:
            progress.update(1)
            progress.set_postfix(objective=f"{value:.6f}", refresh=False)
        state = new_state
        if abs(value - previous) < tol:
            converged = True
            break
        previous = value
    # Final E-step: the reported objective belongs to the parameters returned.
    ll, log_prior = engine.evaluate(state)
    final = (ll + (log_prior if is_map else 0.0)) / n
    params = engine.params(state)
    notes = engine.notes(state, params)
    if not math.isfinite(final):
        notes.append("the objective is not finite at the returned parameters")
    return _Run(
        params=params,
        history=history,
        log_likelihood=log_lik,
        converged=converged,
        n_iter=n_iter,
        objective=final,
        total_log_likelihood=ll,
        notes=notes,
        monotone_violations=violations,
    )


def _start_and_run(engine, how, data, k, generator, max_iter, tol, bar) -> _Run:
    """One restart; from k-means, retried from the next seeding while a component collapses
    (the best attempt is kept)."""
    attempts = 1 + (_COLLAPSE_RETRIES if how == "kmeans" else 0)
    best: _Run | None = None
    for _ in range(attempts):
        run = _run(
            engine,
            _initial_state(engine, how, data, k, generator),
            data.shape[0],
            max_iter,
            tol,
            bar,
        )
        bar.update(max_iter - run.n_iter)
        if best is None or run.objective > best.objective or not math.isfinite(best.objective):
            best = run
        if not _collapsed(run):
            return run
    return best


def _shifted_init(init, shift: torch.Tensor | None):
    """A dict start moved to the centred coordinates (locations minus ``shift``)."""
    if shift is None or not isinstance(init, Mapping) or "locs" not in init:
        return init
    return {**init, "locs": torch.as_tensor(init["locs"], dtype=shift.dtype) - shift}


def _memory_mapped(data: Any) -> bool:
    """A NumPy memory map (read by blocks rather than loaded whole)."""
    import numpy as np

    return isinstance(data, np.memmap)


def fit_em(
    model,
    data: torch.Tensor,
    *,
    init: str | Mapping[str, Any] = "kmeans",
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    reg_covar_mode: str = "relative",
    objective: str = "auto",
    m_step: str = "auto",
    inner_steps: int = 50,
    seed: int | None = 0,
    dtype: torch.dtype = torch.float64,
    progress: bool | None = None,
    columns: list[str] | None = None,
    standard_errors: bool = False,
    chunk_size: int | None = None,
    distributed: bool = False,
) -> FitResult:
    """Fit a model with one enumerated discrete latent by expectation-maximisation.

    Parameters
    ----------
    model
        A model object (e.g. :class:`~ppl_models.models.GaussianMixture`) or a Pyro model
        callable; the closed-form iterations are used when the model takes the
        :class:`~ppl_models.models.ClosedFormEM` role and they serve the objective, the
        generic numerical M-step otherwise. ``init="kmeans++"``/``"random"`` need a
        :class:`~ppl_models.models.MixtureModel`; other models take ``init={site: value}``.
    data : Tensor (N, D)
    init : {"kmeans", "kmeans++", "random"} or dict
        Starting point: k-means (greedy k-means++ seeding then Lloyd iterations, best of a few
        seedings, see :mod:`ppl_models.infer.kmeans`; the default, as scikit-learn's), k-means++
        seeding alone (hard responsibilities from the nearest seed), random
        responsibilities, or values ``{"weights", "locs", "covariances"}`` (moment form, as
        scikit-learn's ``weights_init``/``means_init``) or ``{site: value}``. A dict is used
        for the first restart only; later restarts use k-means.
    n_init : int
        Restarts; the one with the highest final objective is kept. A restart from k-means
        that ends with a collapsed component is retried from the next seeding (up to
        ``_COLLAPSE_RETRIES`` times).
    max_iter, tol : int, float
        Stop when the objective (per observation) changes by less than ``tol`` (as
        scikit-learn), or after ``max_iter`` iterations.
    reg_covar : float
        Regularisation added to every covariance diagonal in the closed-form M-step, which keeps
        a collapsing component finite; such components are reported, with the cause found, in
        ``info["warnings"]``.
    reg_covar_mode : {"relative", "absolute"}
        ``relative`` (default): feature :math:`d` gets ``reg_covar`` times its variance, so the
        fit is the same in any units (rescaling the data changes the log-likelihood by exactly
        the Jacobian); a constant feature is then refused. ``absolute``: ``reg_covar`` itself,
        as scikit-learn. See :mod:`ppl_models.infer.regularisation`.
    objective : {"auto", "ml", "map"}
        Maximum likelihood, or the posterior mode under the model's priors. ``auto``: MAP if
        the user gave priors, else ML.
    m_step : {"auto", "closed_form", "generic"}
        Force the M-step (the generic one works for every enumerable model).
    inner_steps : int
        L-BFGS iterations of a generic M-step.
    seed : int or None
        Seeds the starts' own generator (k-means, k-means++); the global generators (torch,
        NumPy, ``random``, through :func:`pyro.set_rng_seed`) only where they are drawn from:
        the generic M-step and ``init="random"`` (``None``: 0).
    dtype : torch.dtype
        Precision of the fit (float64 by default: EM's convergence test works on small
        differences).
    progress : bool or None
        Progress bar (default: when standard error is a terminal).
    columns : list of str, optional
        Feature names recorded in the result.
    standard_errors : bool
        Store standard errors and asymptotic Wald intervals of every reported parameter
        (observed information, delta method; :mod:`ppl_models.infer.standard_errors`) in
        ``info["standard_errors"]``. Off by default: one double-backward pass per free
        parameter costs 3 to 200 times the fit itself (measured: 100,000 x 2, K=5: 2.3 s
        against 0.7 s; 10,000 x 10, K=5: 7.4 s against 0.04 s; 1,000 x 5, K=3: 0.13 s
        against 0.01 s).
    chunk_size : int, optional
        Accumulate EM's sufficient statistics over blocks of this many rows (memory bounded by
        the block; :func:`~ppl_models.infer.em_chunked.fit_em_chunked`, Gaussian mixtures by
        maximum likelihood). Also taken, with its default block, for a memory-mapped ``data``
        (``numpy.load(path, mmap_mode="r")``) or with ``distributed``. Same parameters and
        iterations as the in-memory fit, to round-off.
    distributed : bool
        ``data`` is this rank's share of the data set; the ranks of the initialised
        ``torch.distributed`` process group fit their union (one ``all_reduce`` per iteration).

    Notes
    -----
    The closed-form (maximum-likelihood) iterations run on the data minus their mean, which
    leaves the likelihood unchanged and keeps the models' expanded quadratic forms precise for
    data with a large offset (values near 1e8); ``locs`` are reported in the data's own
    coordinates. Data whose spread the floating-point grid cannot resolve (float32 values near
    1e8, say) are refused (:func:`~ppl_models.infer.regularisation.check_resolution`).

    Returns
    -------
    FitResult
        ``params`` in the sites' own space, ``history["log_likelihood"]`` (mean per
        observation, labels summed out) and ``history["objective"]``, and in ``info``: the
        objective, ``bic``, ``aic``, ``log_likelihood`` (total), each restart's objective,
        ``monotone_violations``, ``warnings``, ``reg_covar_mode``, ``reg_covar_per_feature``
        and (see ``standard_errors``) ``standard_errors``.
    """
    if chunk_size is not None or distributed or _memory_mapped(data):
        if m_step == "generic" or standard_errors:
            raise ValueError("chunked and distributed EM use the closed-form M-step and "
                             "compute no standard errors")
        from ppl_models.infer.em_chunked import fit_em_chunked

        return fit_em_chunked(
            model, data, chunk_size=chunk_size, distributed=distributed, init=init,
            n_init=n_init, max_iter=max_iter, tol=tol, reg_covar=reg_covar,
            reg_covar_mode=reg_covar_mode, objective=objective, seed=seed, dtype=dtype,
            columns=columns,
        )
    n_init = check_int(n_init, "n_init")
    max_iter = check_int(max_iter, "max_iter")
    tol = check_float(tol, "tol", minimum=0)
    reg_covar = check_float(reg_covar, "reg_covar", minimum=0)
    mixture = isinstance(model, FiniteMixture)  # the roles below without a Protocol walk
    latent = mixture or isinstance(model, LatentModel)
    data = model.validate(data) if latent else check_data(data)
    if data.dtype != dtype:
        check_resolution(data, columns)  # as given: float32 data near 1e8 are already rounded
        data = data.to(dtype)
    mean = data.mean(0)
    centred = data - mean
    variance = centred.square().mean(0)  # feature_variance(data), the centred data kept
    check_resolution(data, columns, variance=variance)  # in the precision of the fit
    reg = reg_covar_per_feature(data, reg_covar, reg_covar_mode, variance=variance)
    objective = _resolve_objective(model, objective)
    reason = (
        model.closed_form_unavailable(objective)
        if isinstance(model, GaussianMixture) or isinstance(model, ClosedFormEM)
        else "the model has no closed-form M-step"
    )
    if m_step == "auto":
        m_step = "closed_form" if reason is None else "generic"
    if m_step == "closed_form" and reason is not None:
        raise ValueError(f"no closed-form M-step here: {reason}")
    if m_step not in ("closed_form", "generic"):
        raise ValueError(f"m_step must be 'auto', 'closed_form' or 'generic'; got {m_step!r}")

    generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    if m_step == "generic" or (isinstance(init, str) and init == "random"):
        # Pyro's models and the random start draw from the global generators.
        pyro.set_rng_seed(0 if seed is None else int(seed))
    n = data.shape[0]
    k = model.n_components if mixture or isinstance(model, MixtureModel) else None
    progress = show_progress(progress)
    start_time = time.perf_counter()
    # Closed-form ML iterations run on centred data (exactly the same likelihood): the
    # models' expanded quadratic forms would otherwise lose their precision to an offset.
    shift = mean if m_step == "closed_form" else None
    work = data if shift is None else centred
    del centred
    if m_step == "closed_form":
        engine = _ClosedForm(model, work, reg, data_var=variance)
    else:
        engine = _Generic(model, work, objective, reg, inner_steps, data_var=variance)
    runs: list[_Run] = []
    bar = (
        tqdm(total=n_init * max_iter, desc="EM", leave=False)
        if progress
        else contextlib.nullcontext(_NO_BAR)
    )
    with bar as shown:
        for restart in range(n_init):
            how = init if restart == 0 or not isinstance(init, Mapping) else "kmeans"
            how = _shifted_init(how, shift)
            run = _start_and_run(engine, how, work, k, generator, max_iter, tol, shown)
            runs.append(run)
    fit_seconds = time.perf_counter() - start_time
    best = _best_finite_run(runs)
    if shift is not None:
        best.params = {**best.params, "locs": best.params["locs"] + shift}

    # The final E-step of the best run already evaluated its parameters.
    total_ll = best.total_log_likelihood
    n_params = _count_parameters(model, best.params, data)
    notes = _fit_notes(best, max_iter, tol, "with reg_covar > 0 or a generic M-step limited "
                       "by inner_steps this can happen by round-off")
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    info = {
        "objective": objective,
        "m_step": engine.name,
        **_likelihood_criteria(total_ll, n, n_params),
        "restart_objectives": [r.objective for r in runs],
        "monotone_violations": best.monotone_violations,
        "reg_covar": reg_covar,
        "reg_covar_mode": reg_covar_mode,
        "reg_covar_per_feature": reg.tolist(),
        "tol": tol,
        "warnings": notes,
    }
    result = FitResult(
        model=model,
        method="em",
        data=data,
        params=best.params,
        draws=None,
        history={"objective": best.history, "log_likelihood": best.log_likelihood},
        converged=best.converged,
        n_iter=best.n_iter,
        seed=seed,
        fit_seconds=fit_seconds,
        info=info,
        columns=list(columns) if columns is not None else [],
    )
    if standard_errors:
        info["standard_errors"] = compute_standard_errors(result).to_json()
    return result
