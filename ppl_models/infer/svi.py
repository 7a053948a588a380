"""Stochastic variational inference for any model and guide, full-batch or in minibatches."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from tqdm.auto import tqdm

import guides
from ppl_models.data import check_data
from ppl_models.images import binarize_threshold
from ppl_models.infer.checkpoint import CHECKPOINT_NAME, load_checkpoint
from ppl_models.infer.init import init_strategy, initial_values
from ppl_models.infer.minibatch import fit_minibatch, kl_weight
from ppl_models.infer.result import FitResult
from ppl_models.infer.stopping import check_finite, plateau

__all__ = ["CHECKPOINT_NAME", "OBJECTIVES", "fit_svi", "kl_weight", "load_checkpoint"]

#: What minibatch steps differentiate (see ``objective`` of :func:`fit_svi`).
OBJECTIVES = ("auto", "pyro", "model")


def fit_svi(
    model: Any,
    data: torch.Tensor,
    *,
    guide: str | Callable | None = None,
    num_steps: int = 2000,
    lr: float | None = None,
    lr_decay: float = 0.1,
    optim: pyro.optim.PyroOptim | None = None,
    num_particles: int = 1,
    init: str | Mapping[str, Any] | None = "kmeans++",
    early_stop: bool = False,
    window: int | None = None,
    min_delta: float = 1e-4,
    num_draws: int = 1000,
    guide_options: Mapping[str, Any] | None = None,
    seed: int | None = 0,
    progress: bool | None = None,
    columns: list[str] | None = None,
    batch_size: int | None = None,
    num_epochs: int | None = None,
    kl_warmup_epochs: int = 0,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    binarize: str | None = None,
    objective: str = "auto",
    time_limit: float | None = None,
    callback: Callable[[int, dict[str, list[float]]], bool | None] | None = None,
) -> FitResult:
    r"""Fit a model by maximising the ELBO with a swappable guide, full-batch or in minibatches.

    :math:`\mathrm{ELBO}(\phi) = \mathbb E_{q_\phi(\theta)}[\log p(x, \theta) - \log
    q_\phi(\theta)] \le \log p(x)` (Hoffman et al., 2013; Ranganath et al., 2014), with
    discrete labels summed out exactly by ``TraceEnum_ELBO`` when the model declares
    ``enumerated_sites`` (Obermeyer et al., 2019), ``Trace_ELBO`` otherwise.

    **Full batch** (no ``batch_size`` nor ``num_epochs``): ``num_steps`` steps on all the data.

    **Minibatches** (``batch_size`` and/or ``num_epochs``): each epoch visits the data once
    in shuffled batches from a ``torch.utils.data.DataLoader`` (seeded generator); the model
    and guide are called as ``model(x_batch, n_obs=N, subsample=indices)`` so that their
    ``pyro.plate("data", N, subsample=indices)`` scales the batch's terms by ``N / B`` and each
    step's ELBO is an unbiased estimate of the full-data ELBO (Hoffman et al., 2013). Parameters
    are updated by one ``torch.optim.Adam`` over all of them (or by ``optim`` through Pyro's
    ``SVI``); the one synchronisation per step is reading the loss.

    Parameters
    ----------
    model
        A model object (``model(data)`` plus declared attributes) or a Pyro model callable.
    data : Tensor (N, D)
    guide : str, callable or None
        ``None`` (default): the model's own ``guide`` if it has one (the VAE family), else
        ``"mean_field"``. Otherwise a kind of :func:`guides.build` (``"map"``,
        ``"mean_field"``, ``"full_rank"``, ``"low_rank"``, ``"flow"``, ``"laplace"``) or a
        guide callable.
    num_steps : int
        Optimisation steps of the full-batch mode.
    lr : float, optional
        Initial learning rate: default 0.01 (full batch, ``ClippedAdam``) or 0.001
        (minibatches, ``Adam``).
    lr_decay : float
        The learning rate decays geometrically to ``lr * lr_decay`` at the last step, so the
        final iterate settles instead of jittering at the step size's noise level.
    optim : pyro.optim.PyroOptim, optional
        Replaces the default optimiser.
    num_particles : int
        Monte-Carlo particles per ELBO estimate.
    init : {"kmeans++", "em", "prior"}, dict or None
        Where a guide built by kind starts (see :func:`ppl_models.infer.init.initial_values`).
    early_stop : bool
        Stop when the ELBO per observation, averaged over ``window`` steps (epochs in minibatch
        mode), rises by less than ``min_delta`` from one window to the next. The same rule sets
        ``converged``.
    window : int, optional
        Default 100 steps (full batch) or 5 epochs (minibatches).
    num_draws : int
        Guide draws of the global latent sites kept in the result (none for ``map``, nor
        for models without global latent sites such as the VAEs).
    guide_options : dict, optional
        Extra keyword arguments of the guide family (``rank``, ``init_scale``, ...).
    seed : int or None
    progress : bool or None
        Progress bar (default: when standard error is a terminal).
    columns : list of str, optional
    batch_size : int, optional
        Minibatch size (default in minibatch mode: all the data).
    num_epochs : int, optional
        Passes over the data (default in minibatch mode: 10).
    kl_warmup_epochs : int
        KL warm-up (minibatch mode): in epoch ``e`` the log densities of the latent sites
        (``local_sites`` and ``enumerated_sites``) in model *and* guide are multiplied by
        :math:`\beta_e = \min(1, e / W)` (:func:`kl_weight`), which weights the KL term of the
        ELBO by :math:`\beta_e` and leaves the reconstruction term alone.
    checkpoint_dir : path, optional
        After every epoch, write ``checkpoint_dir/checkpoint.pt`` (atomically replaced):
        ``epoch``, ``model_state`` (the model's ``state_dict()`` when it is an ``nn.Module``),
        ``param_store`` (Pyro's parameters, unconstrained), ``optimizer_state`` and ``history``:
        tensors and plain Python values only, so ``torch.load(..., weights_only=True)``
        reads it (:func:`load_checkpoint`).
    binarize : {None, "dynamic"}
        ``"dynamic"`` (minibatch mode): ``data`` are intensities in [0, 1] and every batch is
        drawn as binary pixels :math:`\mathrm{Bernoulli}(x)` afresh, in the ``DataLoader``, with
        a generator seeded from ``seed`` (:class:`ppl_models.images.DynamicBinarizer`).
    objective : {"auto", "pyro", "model"}
        What minibatch steps differentiate. ``"pyro"``: Pyro's ``Trace_ELBO`` /
        ``TraceEnum_ELBO`` on the model and guide. ``"model"``: the model's own estimator of
        the same ELBO, ``reconstruction - beta * KL`` from its ``elbo_terms`` (the VAE family;
        the same plate scaling ``N / B``, the KL in closed form where PyTorch has it, the
        GMVAE's label summed exactly), which skips Pyro's per-step tracing (the tests check it
        against ``Trace_ELBO`` / ``TraceEnum_ELBO``). ``"auto"`` (default): ``"model"`` when
        the guide is the model's own, the model is an ``nn.Module`` with ``elbo_terms``,
        ``optim`` is None and ``num_particles == 1``; else ``"pyro"``. Either way, Pyro's
        validation (when enabled) runs on the first step of each epoch only.
    time_limit : float, optional
        Minibatch mode: seconds of training after which no new epoch starts (the epoch
        running when the limit passes is finished; the learning-rate schedule and KL warm-up
        still follow ``num_epochs``). ``info["stopped_by"]`` says what ended the fit.
    callback : callable, optional
        Minibatch mode: ``callback(epoch, history)`` after each epoch (``epoch`` counts from
        1; ``history`` as returned below, so far), e.g. to score held-out data or keep the
        best state; returning True stops the fit.

    Returns
    -------
    FitResult
        Full batch: ``history["elbo"]`` holds the ELBO estimate per observation at each step.
        Minibatches: per epoch, ``history["elbo"]`` is the mean over the epoch's steps of the
        training objective per observation (β-weighted during warm-up); ``history["beta"]``
        the KL weight; and, when the model has ``elbo_terms``, its terms
        (``reconstruction``, ``kl``; a GMVAE's ``reconstruction``, ``kl_z``, ``kl_y``) per
        observation at β = 1, computed once at the end of each epoch on a fixed evaluation
        batch (``min(N, batch_size)`` rows chosen by the seed, with fixed noise), so that
        ``reconstruction - kl`` is that batch's ELBO. ``params`` is the guide's median and
        ``draws`` ``(1, num_draws, ...)`` guide draws of each global latent site (``{}`` and
        ``None`` for a model without any, whose fitted networks live in the model object
        itself and in the checkpoint).
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer; got {num_steps!r}")
    if not isinstance(num_draws, int) or num_draws < 0:
        raise ValueError(f"num_draws must be a non-negative integer; got {num_draws!r}")
    if not 0 < lr_decay <= 1:
        raise ValueError(f"lr_decay must be in (0, 1]; got {lr_decay}")
    minibatch = batch_size is not None or num_epochs is not None
    if not minibatch:
        for name, value, default in (
            ("kl_warmup_epochs", kl_warmup_epochs, 0),
            ("checkpoint_dir", checkpoint_dir, None),
            ("binarize", binarize, None),
            ("time_limit", time_limit, None),
            ("callback", callback, None),
        ):
            if value != default:
                raise ValueError(f"{name} needs minibatch mode: pass batch_size or num_epochs")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}; got {objective!r}")
    if time_limit is not None and not (
        isinstance(time_limit, (int, float)) and not isinstance(time_limit, bool)
        and time_limit > 0
    ):
        raise ValueError(f"time_limit must be a positive number of seconds; got {time_limit!r}")
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable; got {callback!r}")
    if binarize not in (None, "dynamic"):
        raise ValueError(
            f"binarize must be None or 'dynamic'; got {binarize!r} (threshold at load time: "
            "load_images(..., binarize='threshold'))"
        )
    data = _validated(model, data, binarize)
    seed = 0 if seed is None else int(seed)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    n = data.shape[0]
    if guide is None:
        guide = "model" if callable(getattr(model, "guide", None)) else "mean_field"
    options = dict(guide_options or {})
    if guide == "model":
        if not callable(getattr(model, "guide", None)):
            raise ValueError(f"guide='model' needs a model with its own guide; {model!r} has none")
        guide_fn = model.guide
        kind = f"{type(model).__name__}.guide"
    elif isinstance(guide, str):
        values = initial_values(model, data, init, seed)
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
    model_fn = guides.model_callable(model)
    if progress is None:
        progress = sys.stderr.isatty()

    if minibatch:
        run = fit_minibatch(
            model, model_fn, guide_fn, loss, data,
            objective=objective, own_guide=guide == "model",
            batch_size=n if batch_size is None else batch_size,
            num_epochs=10 if num_epochs is None else num_epochs,
            lr=1e-3 if lr is None else lr, lr_decay=lr_decay, optim=optim,
            kl_warmup_epochs=kl_warmup_epochs, checkpoint_dir=checkpoint_dir,
            binarize=binarize, early_stop=early_stop, window=window or 5,
            min_delta=min_delta, seed=seed, progress=progress, kind=kind,
            time_limit=time_limit, callback=callback,
        )
        history, converged, fit_seconds, extra = run
        trace_args, trace_kwargs = _trace_batch(data)
        elbo_history = history["elbo"]
        window = window or 5
    else:
        lr = 0.01 if lr is None else lr
        window = window or 100
        optimiser = optim or pyro.optim.ClippedAdam({"lr": lr, "lrd": lr_decay ** (1 / num_steps)})
        svi = SVI(model_fn, guide_fn, optimiser, loss)
        elbo_history: list[float] = []
        converged = False
        start = time.perf_counter()
        with tqdm(total=num_steps, disable=not progress, desc=f"SVI ({kind})", leave=False) as bar:
            for _ in range(num_steps):
                value = svi.step(data)
                check_finite(value, len(elbo_history) + 1)
                elbo_history.append(-value / n)
                bar.update(1)
                if len(elbo_history) % 50 == 0:
                    bar.set_postfix(elbo=f"{elbo_history[-1]:.4f}", refresh=False)
                if early_stop and plateau(elbo_history, window, min_delta):
                    converged = True
                    break
        if not early_stop:
            converged = plateau(elbo_history, window, min_delta)
        fit_seconds = time.perf_counter() - start
        history = {"elbo": elbo_history}
        trace_args, trace_kwargs = (data,), {}
        extra = {}

    sites = list(guides.global_latent_supports(model, *trace_args, **trace_kwargs))
    posterior = guides.fitted_posterior(guide_fn, sites, *trace_args, **trace_kwargs)
    guide_fn = posterior.guide
    point = posterior.is_point or num_draws == 0
    params = posterior.point()
    draws = posterior.draws(num_draws) if sites and not point else None
    info = {
        "guide": kind,
        "elbo": float(sum(elbo_history[-window:]) / len(elbo_history[-window:])),
        "elbo_window": min(window, len(elbo_history)),
        "loss": type(loss).__name__,
        "num_particles": num_particles,
        "point_estimate": point and bool(sites),
        **extra,
    }
    return FitResult(
        model=model,
        method="svi",
        data=data,
        params=params,
        draws=draws,
        history=history,
        converged=converged,
        n_iter=len(elbo_history),
        seed=seed,
        fit_seconds=fit_seconds,
        info=info,
        columns=list(columns) if columns is not None else [],
        guide=guide_fn,
    )


def _validated(model: Any, data: Any, binarize: str | None) -> torch.Tensor:
    """The model's own validation; with dynamic binarization, of a binarized copy."""
    if binarize == "dynamic":
        data = check_data(data)
        if bool(((data < 0) | (data > 1)).any()):
            raise ValueError(
                "binarize='dynamic' draws pixels as Bernoulli(intensity): the data must lie "
                f"in [0, 1]; got [{float(data.min()):.4g}, {float(data.max()):.4g}]"
            )
        if hasattr(model, "validate"):
            data = data.to(model.validate(binarize_threshold(data)).dtype)
        return data
    return model.validate(data) if hasattr(model, "validate") else data


def _trace_batch(data: torch.Tensor) -> tuple[tuple, dict]:
    """Arguments for one cheap traced run of a minibatch model (two rows of the data)."""
    rows = torch.arange(min(2, data.shape[0]))
    return (data[rows],), {"n_obs": data.shape[0], "subsample": rows}
