"""Stochastic variational inference for any model and guide."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import AutoDelta, AutoGuide, AutoLaplaceApproximation
from tqdm.auto import tqdm

import guides
from ppl_models.infer.init import init_strategy, initial_values
from ppl_models.infer.result import FitResult

__all__ = ["fit_svi"]


def _plateau(history: list[float], window: int, min_delta: float) -> bool:
    """Whether the mean of the last ``window`` values rose by less than ``min_delta``."""
    if len(history) < 2 * window:
        return False
    recent = sum(history[-window:]) / window
    before = sum(history[-2 * window : -window]) / window
    return recent - before < min_delta


def fit_svi(
    model: Any,
    data: torch.Tensor,
    *,
    guide: str | Callable = "mean_field",
    num_steps: int = 2000,
    lr: float = 0.01,
    lr_decay: float = 0.1,
    optim: pyro.optim.PyroOptim | None = None,
    num_particles: int = 1,
    init: str | Mapping[str, Any] | None = "kmeans++",
    early_stop: bool = False,
    window: int = 100,
    min_delta: float = 1e-4,
    num_draws: int = 1000,
    guide_options: Mapping[str, Any] | None = None,
    seed: int | None = 0,
    progress: bool | None = None,
    columns: list[str] | None = None,
) -> FitResult:
    r"""Fit a model by maximising the ELBO with a swappable guide.

    :math:`\mathrm{ELBO}(\phi) = \mathbb E_{q_\phi(\theta)}[\log p(x, \theta) - \log
    q_\phi(\theta)] \le \log p(x)` (Hoffman et al., 2013; Ranganath et al., 2014), with
    discrete labels summed out exactly by ``TraceEnum_ELBO`` when the model declares
    ``enumerated_sites`` (Obermeyer et al., 2019), ``Trace_ELBO`` otherwise.

    Parameters
    ----------
    model
        A model object (``model(data)`` plus declared attributes) or a Pyro model callable.
    data : Tensor (N, D)
    guide : str or callable
        A kind of :func:`guides.build` (``"map"``, ``"mean_field"``, ``"full_rank"``,
        ``"low_rank"``, ``"flow"``, ``"laplace"``) or a guide callable.
    num_steps, lr : int, float
        Optimisation steps and the initial learning rate of the default ``ClippedAdam``.
    lr_decay : float
        The learning rate decays geometrically to ``lr * lr_decay`` at the last step, so the
        final iterate settles instead of jittering at the step size's noise level.
    optim : pyro.optim.PyroOptim, optional
        Replaces the default optimiser.
    num_particles : int
        Monte-Carlo particles per ELBO estimate.
    init : {"kmeans++", "em", "prior"}, dict or None
        Where the guide starts (see :func:`ppl_models.infer.init.initial_values`).
    early_stop : bool
        Stop when the ELBO per observation, averaged over ``window`` steps, rises by less
        than ``min_delta`` from one window to the next. The same rule sets ``converged``.
    num_draws : int
        Guide draws kept in the result (none for ``map``: a point estimate).
    guide_options : dict, optional
        Extra keyword arguments of the guide family (``rank``, ``init_scale``, ...).
    seed : int or None
    progress : bool or None
        Progress bar (default: when standard error is a terminal).
    columns : list of str, optional

    Returns
    -------
    FitResult
        ``history["elbo"]``: the ELBO estimate per observation at each step; ``params``: the
        guide's median; ``draws``: ``(1, num_draws, ...)`` guide draws of each global site.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer; got {num_steps!r}")
    if not isinstance(num_draws, int) or num_draws < 0:
        raise ValueError(f"num_draws must be a non-negative integer; got {num_draws!r}")
    if hasattr(model, "validate"):
        data = model.validate(data)
    seed = 0 if seed is None else int(seed)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    n = data.shape[0]
    options = dict(guide_options or {})
    if isinstance(guide, str):
        values = initial_values(model, data, init, seed)
        if guide != "flow":
            options.setdefault("init_loc_fn", init_strategy(values))
        guide_fn = guides.build(guide, model, **options)
        kind = guide
    else:
        guide_fn = guides.build(guide, model)
        kind = getattr(guide, "__name__", type(guide).__name__)
    enumerated = tuple(getattr(model, "enumerated_sites", ()))
    plate_nesting = getattr(model, "max_plate_nesting", None)
    if enumerated:
        loss = TraceEnum_ELBO(max_plate_nesting=plate_nesting, num_particles=num_particles)
    else:
        loss = Trace_ELBO(max_plate_nesting=plate_nesting or math.inf, num_particles=num_particles)
    if not 0 < lr_decay <= 1:
        raise ValueError(f"lr_decay must be in (0, 1]; got {lr_decay}")
    optimiser = optim or pyro.optim.ClippedAdam({"lr": lr, "lrd": lr_decay ** (1 / num_steps)})
    model_fn = guides.model_callable(model)
    svi = SVI(model_fn, guide_fn, optimiser, loss)
    if progress is None:
        progress = sys.stderr.isatty()

    history: list[float] = []
    converged = False
    start = time.perf_counter()
    with tqdm(total=num_steps, disable=not progress, desc=f"SVI ({kind})", leave=False) as bar:
        for _ in range(num_steps):
            value = svi.step(data)
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"the ELBO became {value} at step {len(history) + 1}; lower lr or change init"
                )
            history.append(-value / n)
            bar.update(1)
            if len(history) % 50 == 0:
                bar.set_postfix(elbo=f"{history[-1]:.4f}", refresh=False)
            if early_stop and _plateau(history, window, min_delta):
                converged = True
                break
    if not early_stop:
        converged = _plateau(history, window, min_delta)
    fit_seconds = time.perf_counter() - start

    sites = list(guides.global_latent_supports(model, data))
    if isinstance(guide_fn, AutoLaplaceApproximation):
        # Trained as MAP; the Gaussian at the mode has the inverse Hessian as covariance.
        guide_fn = guide_fn.laplace_approximation(data)
    point = isinstance(guide_fn, AutoDelta) or num_draws == 0
    with torch.no_grad():
        if isinstance(guide_fn, AutoGuide):
            params = {k: v.detach() for k, v in guide_fn.median(data).items() if k in sites}
        else:
            params = _draw(guide_fn, data, sites, 1)
            params = {k: v[0, 0] for k, v in params.items()}
        draws = None if point else _draw(guide_fn, data, sites, num_draws)
    info = {
        "guide": kind,
        "elbo": float(sum(history[-window:]) / len(history[-window:])),
        "elbo_window": min(window, len(history)),
        "loss": type(loss).__name__,
        "num_particles": num_particles,
        "point_estimate": point,
    }
    return FitResult(
        model=model,
        method="svi",
        data=data,
        params=params,
        draws=draws,
        history={"elbo": history},
        converged=converged,
        n_iter=len(history),
        seed=seed,
        fit_seconds=fit_seconds,
        info=info,
        columns=list(columns) if columns is not None else [],
        guide=guide_fn,
    )


def _draw(guide: Callable, data: torch.Tensor, sites: list[str], num: int) -> dict:
    """``num`` guide draws of each site, shaped ``(1, num, *site_shape)``."""
    samples: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    for _ in range(num):
        trace = pyro.poutine.trace(guide).get_trace(data)
        for s in sites:
            samples[s].append(trace.nodes[s]["value"].detach())
    return {s: torch.stack(v).unsqueeze(0) for s, v in samples.items()}
