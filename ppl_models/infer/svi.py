"""Stochastic variational inference for any model and guide, full-batch or in minibatches.

:func:`fit_svi` sets up the guide and the ELBO, then runs the full-batch step loop
(:mod:`ppl_models.infer.full_batch`) or the minibatch trainer (:mod:`ppl_models.infer.trainer`),
and summarises the guide's posterior into a :class:`FitResult`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO

import guides
from guides.structure import model_name
from ppl_models._shared.checks import check_choice, check_float, check_int
from ppl_models._shared.progress import show_progress
from ppl_models.data import check_data
from ppl_models.images import DynamicBinarizer, binarize_threshold, check_intensities
from ppl_models.infer import distributed
from ppl_models.infer.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointDir,
    load_checkpoint,
    open_checkpoint_dir,
)
from ppl_models.infer.full_batch import FullBatchConfig, run_full_batch
from ppl_models.infer.init import init_strategy, initial_values
from ppl_models.infer.result import FitResult
from ppl_models.infer.stopping import elbo_convergence
from ppl_models.infer.trainer import (
    OBJECTIVES,
    STEPS,
    Batches,
    Callback,
    CheckpointWriter,
    EarlyStopping,
    ElboTerms,
    StepInputs,
    TimeLimit,
    Trainer,
    TrainerConfig,
    TrainingRun,
    UserCallback,
    kl_weight,
    objectives,
    resolve_objective,
)
from ppl_models.models.protocols import AmortizedModel, LatentModel

__all__ = [
    "CHECKPOINT_NAME",
    "OBJECTIVES",
    "TrainerConfig",
    "fit_svi",
    "kl_weight",
    "load_checkpoint",
]

History = dict[str, list[float]]


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
    callback: Callable[[int, History], bool | None] | Callback | None = None,
    config: TrainerConfig | None = None,
    resume: bool = False,
    overwrite: bool = False,
    checkpoint_every: int = 100,
) -> FitResult:
    r"""Fit a model by maximising the ELBO with a swappable guide, full-batch or in minibatches.

    :math:`\mathrm{ELBO}(\phi) = \mathbb E_{q_\phi(\theta)}[\log p(x, \theta) - \log
    q_\phi(\theta)] \le \log p(x)` (Hoffman et al., 2013; Ranganath et al., 2014), with
    discrete labels summed out exactly by ``TraceEnum_ELBO`` when the model declares
    ``enumerated_sites`` (Obermeyer et al., 2019), ``Trace_ELBO`` otherwise. A full-batch fit
    of a model with the ``CollapsedPosterior`` role (every built-in mixture) with a ``map``,
    ``mean_field`` or ``AutoContinuous`` guide uses
    :class:`~ppl_models.infer.collapsed_svi.CollapsedELBO` instead: the same ELBO and
    gradients draw for draw (tested against ``TraceEnum_ELBO``), without tracing the model at
    every step; ``result.info["loss"]`` names the loss used.

    **Full batch** (no ``batch_size`` nor ``num_epochs``): ``num_steps`` steps on all the data.

    **Minibatches** (``batch_size`` and/or ``num_epochs``, or ``config``): the trainer
    (:mod:`ppl_models.infer.trainer`) with a step strategy from its registry; each epoch
    visits the data once in shuffled batches from a ``torch.utils.data.DataLoader`` (seeded
    generator); the model and guide are called as ``model(x_batch, n_obs=N,
    subsample=indices)`` so that their ``pyro.plate("data", N, subsample=indices)`` scales the
    batch's terms by ``N / B`` and each step's ELBO is an unbiased estimate of the full-data
    ELBO (Hoffman et al., 2013). Parameters are updated by one ``torch.optim.Adam`` over all of
    them, its rate decayed by ``ExponentialLR`` (or by ``optim`` through Pyro's ``SVI``); the
    one synchronisation per step is reading the loss.

    Parameters
    ----------
    model
        A model object (``model(data)`` plus declared attributes) or a Pyro model callable.
    data : Tensor (N, D)
    guide : str, callable or None
        ``None`` (default): the model's own ``guide`` if it is an
        :class:`~ppl_models.models.protocols.AmortizedModel` (the VAE family), else
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
        Stop as soon as the ELBO trace is flat: over the last two windows of ``window``
        steps (epochs in minibatch mode), the least-squares trend of the ELBO per observation
        changes by at most ``min_delta`` per window plus two standard errors of its noise
        (:func:`ppl_models.infer.stopping.elbo_convergence`). The same rule, read on the final
        trace, sets ``converged``; its numbers are in ``info["convergence"]``. With the
        default full-batch ``window`` it cannot stop before half of ``num_steps``.
    window : int, optional
        Default (full batch) ``max(100, num_steps // 4)`` steps, so that the rule reads the
        second half of the trace: the learning rate decays over ``num_steps``, and a trace
        judged on a fixed 100 steps near the end looks flat because the steps have become
        small, not because the fit has arrived (a 600-step Old Faithful fit 0.8 NUTS sds off
        did). Minibatches: 5 epochs.
    min_delta : float
        Tolerance of the convergence rule: change of the ELBO per observation per window.
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
        Write ``checkpoint_dir/checkpoint.pt`` (atomically replaced) after every epoch
        (minibatches) or every ``checkpoint_every`` steps and at the last one (full batch):
        parameters (``model_state``, ``param_store``), every optimiser's and scheduler's state,
        the RNG states (torch, python, numpy, the data loader's and the binarizer's
        generators), ``epoch``, ``history`` and the settings; tensors and plain Python values
        only, so ``torch.load(..., weights_only=True)`` reads it (:func:`load_checkpoint`;
        the keys are listed in :mod:`ppl_models.infer.checkpoint`). A folder that already
        holds a checkpoint is refused unless ``resume`` or ``overwrite`` is given.
    binarize : {None, "dynamic"}
        ``"dynamic"`` (minibatch mode): ``data`` are intensities in [0, 1] and every batch is
        drawn as binary pixels :math:`\mathrm{Bernoulli}(x)` afresh, in the ``DataLoader``, with
        a generator seeded from ``seed``: the transform
        :class:`ppl_models.images.DynamicBinarizer` given to the trainer.
    objective : {"auto", "pyro", "model"} or a step registered in ``trainer.STEPS``
        The minibatch step strategy, i.e. what steps differentiate. ``"pyro"``: Pyro's
        ``Trace_ELBO`` / ``TraceEnum_ELBO`` on the model and guide. ``"model"``: the model's
        own estimator of the same ELBO, ``reconstruction - beta * KL`` from its
        ``elbo_terms`` (the VAE family; the same plate scaling ``N / B``, the KL in closed
        form where PyTorch has it, the GMVAE's label summed exactly), which skips Pyro's
        per-step tracing (the tests check it against ``Trace_ELBO`` / ``TraceEnum_ELBO``).
        ``"auto"`` (default): ``"model"`` when the guide is the model's own, the model is an
        ``nn.Module`` with ``elbo_terms``, ``optim`` is None and ``num_particles == 1``; else
        ``"pyro"``. Either way, Pyro's validation (when enabled) runs on the first step of
        each epoch only.
    time_limit : float, optional
        Minibatch mode: seconds of training (in this call) after which no new epoch starts
        (the epoch running when the limit passes is finished; the learning-rate schedule
        and KL warm-up still follow ``num_epochs``). ``info["stopped_by"]`` says what ended
        the fit (``"num_epochs"``/``"num_steps"``, ``"early_stop"``, ``"callback"``,
        ``"time_limit"``).
    callback : callable or Callback, optional
        Minibatch mode: ``callback(epoch, history)`` after each epoch (``epoch`` counts from
        1; ``history`` as returned below, so far), e.g. to score held-out data or keep the
        best state; returning True stops the fit. Or a
        :class:`~ppl_models.infer.trainer.Callback`, whose ``on_epoch_end(epoch, history)``
        is called the same way and whose ``name`` goes into ``info["stopped_by"]``. It runs
        after the epoch's checkpoint is written.
    config : TrainerConfig, optional
        Minibatch mode with these settings, instead of ``batch_size``, ``num_epochs``,
        ``lr``, ``lr_decay``, ``kl_warmup_epochs``, ``objective``, ``num_particles``,
        ``early_stop``, ``window``, ``min_delta``, ``time_limit`` and ``seed`` (which must
        then be left at their defaults).
    resume : bool
        Continue the fit whose checkpoint ``checkpoint_dir`` holds: parameters, optimiser
        and learning-rate states, RNG states, epoch (or step) and history are restored, so the
        fit ends with the numbers of an uninterrupted one with the same settings. The
        settings must be the checkpoint's (``ValueError`` naming the first that differs;
        ``time_limit`` may change), and so must the mode (full batch or minibatches). Without
        a checkpoint in the folder, the fit starts afresh.
    overwrite : bool
        Discard a checkpoint ``checkpoint_dir`` holds and start afresh.
    checkpoint_every : int
        Full batch: steps between checkpoints (default 100).

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
        ``reconstruction - kl`` is that batch's ELBO. ``converged`` is the verdict of
        :func:`~ppl_models.infer.stopping.elbo_convergence` on ``history["elbo"]`` (or, with
        ``early_stop``, whether it stopped the fit), and ``info["convergence"]`` the numbers
        it used (``rule``, ``window``, ``span``, ``batches``, ``slope``, ``slope_se``,
        ``change``, ``noise``, ``min_delta``). ``params`` is the guide's median and
        ``draws`` ``(1, num_draws, ...)`` guide draws of each global latent site (``{}`` and
        ``None`` for a model without any, whose fitted networks live in the model object
        itself and in the checkpoint).
    """
    minibatch = config is not None or batch_size is not None or num_epochs is not None
    _check_arguments(num_steps, num_draws, lr_decay, objective, binarize, checkpoint_every)
    if window is not None:
        check_int(window, "window")
    check_float(min_delta, "min_delta", minimum=0)
    _check_mode(minibatch, kl_warmup_epochs=kl_warmup_epochs, binarize=binarize,
                time_limit=time_limit, callback=callback)
    if (resume or overwrite) and checkpoint_dir is None:
        raise ValueError("resume and overwrite need checkpoint_dir")
    data = _validated(model, data, binarize)
    seed = 0 if seed is None else int(seed)
    if minibatch:
        config = _trainer_config(config, data.shape[0], dict(
            batch_size=batch_size, num_epochs=num_epochs, lr=lr, lr_decay=lr_decay,
            kl_warmup_epochs=kl_warmup_epochs, objective=objective, num_particles=num_particles,
            early_stop=early_stop, window=window, min_delta=min_delta, time_limit=time_limit,
            seed=seed,
        ))
        seed, num_particles, window = config.seed, config.num_particles, config.window
        min_delta, elbo_window = config.min_delta, config.window
    directory = None
    # In a data-parallel run only rank 0 touches the checkpoint folder (it sends the others
    # the state it resumes from).
    if checkpoint_dir is not None and (not minibatch or distributed.world()[0] == 0):
        mode = "minibatch" if minibatch else "full_batch"
        directory = open_checkpoint_dir(checkpoint_dir, mode=mode, resume=resume,
                                        overwrite=overwrite)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide_fn, kind = _guide(model, data, guide, guide_options, init, seed)
    setup = _Setup(model, data, guide_fn, kind, _elbo(model, num_particles), optim,
                   show_progress(progress), directory)
    if minibatch:
        run = _fit_minibatch(setup, config, binarize, callback)
        trace_args, trace_kwargs = _trace_batch(data)
    else:
        # the reported ELBO averages the last 100 steps; the convergence rule reads more
        elbo_window, window = window or 100, window or max(100, num_steps // 4)
        full = FullBatchConfig(num_steps, 0.01 if lr is None else lr, lr_decay, num_particles,
                               early_stop, window, min_delta, seed)
        run = _fit_full_batch(setup, full, checkpoint_every)
        trace_args, trace_kwargs = (data,), {}
    guide_fn, sites, point, params, draws = _posterior_summary(
        guide_fn, model, trace_args, trace_kwargs, num_draws
    )
    elbo = run.history["elbo"]
    info = {
        "guide": kind,
        "elbo": float(sum(elbo[-elbo_window:]) / len(elbo[-elbo_window:])),
        "elbo_window": min(elbo_window, len(elbo)),
        "loss": type(setup.loss).__name__,
        "num_particles": num_particles,
        "point_estimate": point and bool(sites),
        **run.info,
        "convergence": elbo_convergence(elbo, window, min_delta).as_dict(),
    }
    return FitResult(
        model=model, method="svi", data=data, params=params, draws=draws, history=run.history,
        converged=run.converged, n_iter=len(elbo), seed=seed, fit_seconds=run.fit_seconds,
        info=info, columns=list(columns) if columns is not None else [], guide=guide_fn,
    )


# ----------------------------------------------------------------------------- checks
def _check_arguments(num_steps: Any, num_draws: Any, lr_decay: float, objective: str,
                     binarize: str | None, checkpoint_every: Any) -> None:
    for name, value, least in (("num_steps", num_steps, 1), ("num_draws", num_draws, 0),
                               ("checkpoint_every", checkpoint_every, 1)):
        check_int(value, name, minimum=least)
    check_float(lr_decay, "lr_decay", minimum=0, maximum=1, strict_minimum=True)
    check_choice(objective, "objective", objectives())
    if objective == "adversarial":
        raise ValueError(
            "objective='adversarial' trains a two-player game, not a guide: use "
            "ppl_models.infer.fit_adversarial(model, data, ...)"
        )
    if binarize not in (None, "dynamic"):
        raise ValueError(
            f"binarize must be None or 'dynamic'; got {binarize!r} (threshold at load time: "
            "load_images(..., binarize='threshold'))"
        )


def _check_mode(minibatch: bool, **minibatch_only: Any) -> None:
    """Refuse minibatch-only arguments in full-batch mode, and a callback that is not one."""
    callback = minibatch_only["callback"]
    if callback is not None and not (callable(callback) or isinstance(callback, Callback)):
        raise ValueError(f"callback must be callable; got {callback!r}")
    if minibatch:
        return
    for name, value in minibatch_only.items():
        if value is not None and not (name == "kl_warmup_epochs" and value == 0):
            raise ValueError(f"{name} needs minibatch mode: pass batch_size or num_epochs")


#: Defaults of the keyword arguments that ``config`` replaces.
_CONFIG_DEFAULTS = {
    "batch_size": None, "num_epochs": None, "lr": None, "lr_decay": 0.1,
    "kl_warmup_epochs": 0, "objective": "auto", "num_particles": 1, "early_stop": False,
    "window": None, "min_delta": 1e-4, "time_limit": None,
}


def _trainer_config(config: TrainerConfig | None, n: int, given: dict[str, Any]) -> TrainerConfig:
    """``config``, or one built from the keyword arguments (with the minibatch defaults)."""
    if config is not None:
        clash = [k for k, v in _CONFIG_DEFAULTS.items() if given[k] != v]
        if given["seed"] not in (0, config.seed):
            clash.append("seed")
        if clash:
            raise ValueError(f"pass either config or {clash}, not both")
        return config
    return TrainerConfig(**{
        **given,
        "batch_size": n if given["batch_size"] is None else given["batch_size"],
        "num_epochs": 10 if given["num_epochs"] is None else given["num_epochs"],
        "lr": 1e-3 if given["lr"] is None else given["lr"],
        "window": given["window"] or 5,
    })


def _validated(model: Any, data: Any, binarize: str | None) -> torch.Tensor:
    """The model's own validation; with dynamic binarization, of a binarized copy."""
    validate = model.validate if isinstance(model, LatentModel) else None
    if binarize == "dynamic":
        data = check_intensities(check_data(data))
        return data if validate is None else data.to(validate(binarize_threshold(data)).dtype)
    return data if validate is None else validate(data)


# ----------------------------------------------------------------------------- set-up
@dataclass(frozen=True)
class _Setup:
    """What both modes share: the model, data, guide, loss, optimiser and output."""

    model: Any
    data: torch.Tensor
    guide_fn: Callable
    kind: str
    loss: Trace_ELBO | TraceEnum_ELBO
    optim: pyro.optim.PyroOptim | None
    progress: bool
    directory: CheckpointDir | None

    def identity(self, **more: Any) -> dict[str, Any]:
        """What a resumed fit must share with its checkpoint beside the settings."""
        return {"model": model_name(self.model), "guide": self.kind, **more}


def _guide(model: Any, data: torch.Tensor, guide: str | Callable | None,
           options: Mapping[str, Any] | None, init: Any, seed: int) -> tuple[Callable, str]:
    """The guide callable and its name (``guide`` of :func:`fit_svi`)."""
    if guide is None:
        guide = "model" if isinstance(model, AmortizedModel) else "mean_field"
    if guide == "model":
        if not isinstance(model, AmortizedModel):
            raise ValueError(f"guide='model' needs a model with its own guide; {model!r} has none")
        return model.guide, f"{type(model).__name__}.guide"
    if isinstance(guide, str):
        options = dict(options or {})
        options.setdefault("init_loc_fn", init_strategy(initial_values(model, data, init, seed)))
        return guides.build(guide, model, **options), guide
    return guides.build(guide, model), model_name(guide)


def _elbo(model: Any, num_particles: int) -> Trace_ELBO | TraceEnum_ELBO:
    """``TraceEnum_ELBO`` when the model enumerates sites, ``Trace_ELBO`` otherwise."""
    # Undeclared (a plain Pyro callable): Pyro guesses the nesting from one traced run.
    nesting = model.max_plate_nesting if isinstance(model, LatentModel) else math.inf
    if guides.enumerated_sites(model):
        return TraceEnum_ELBO(max_plate_nesting=nesting, num_particles=num_particles)
    return Trace_ELBO(max_plate_nesting=nesting, num_particles=num_particles)


def _latent_sites(model: Any) -> tuple[str, ...]:
    """The per-observation latent sites KL warm-up weights (continuous and enumerated)."""
    return tuple(dict.fromkeys(
        (*guides.declared_local_latents(model), *guides.enumerated_sites(model))
    ))


# ----------------------------------------------------------------------------- the two modes
def _fit_full_batch(setup: _Setup, config: FullBatchConfig, checkpoint_every: int) -> TrainingRun:
    optimiser = setup.optim or pyro.optim.ClippedAdam(
        {"lr": config.lr, "lrd": config.lr_decay ** (1 / config.num_steps)}
    )
    svi = SVI(guides.model_callable(setup.model), setup.guide_fn, optimiser, setup.loss)
    return run_full_batch(
        setup.model, svi, setup.data, config, identity=setup.identity(),
        checkpoint=setup.directory, checkpoint_every=checkpoint_every,
        progress=setup.progress, desc=f"SVI ({setup.kind})",
    )


def _fit_minibatch(setup: _Setup, config: TrainerConfig, binarize: str | None,
                   callback: Callable | Callback | None) -> TrainingRun:
    model, seed = setup.model, config.seed
    own_guide = isinstance(model, AmortizedModel) and setup.guide_fn == model.guide
    name = resolve_objective(config.objective, model, own_guide=own_guide, optim=setup.optim,
                             num_particles=config.num_particles)
    latent = _latent_sites(model)
    if config.kl_warmup_epochs and not latent and name == "pyro":
        raise ValueError(
            "kl_warmup_epochs needs a model that declares its latent sites (local_sites)"
        )
    dynamic = binarize == "dynamic"
    batches = Batches(setup.data, config.batch_size, seed,
                      transform=DynamicBinarizer(seed + 1) if dynamic else None,
                      eval_transform=DynamicBinarizer(seed + 2) if dynamic else None)
    steps = len(batches) * config.num_epochs
    step = STEPS[name](StepInputs(
        model, guides.model_callable(model), setup.guide_fn, setup.loss, setup.optim,
        latent if config.kl_warmup_epochs else (), config.lr, config.lr_decay, steps,
    ))
    trainer = Trainer(model, step, batches, config,
                      setup.identity(objective=step.name, binarize=binarize))
    trainer.prepare()
    directory = setup.directory
    writer = None if directory is None else CheckpointWriter(directory, trainer.state_dict)
    trainer.callbacks = _callbacks(model, batches, config, callback, writer)
    resumed = None if directory is None else directory.resumed
    if trainer.world > 1:
        resumed = distributed.broadcast_object(resumed)
    if resumed is not None:
        where = Path("rank 0's checkpoint") if directory is None else directory.file
        trainer.load_state_dict(resumed, where)
    run = trainer.fit(progress=setup.progress, desc=f"SVI ({setup.kind})")
    run.info.update(binarize=binarize,
                    checkpoint=None if directory is None else str(directory.file))
    return run


def _callbacks(model: Any, batches: Batches, config: TrainerConfig,
               callback: Callable | Callback | None,
               writer: CheckpointWriter | None) -> list[Callback]:
    """In order: the ELBO terms, the checkpoint (of the epoch with its terms, whatever stops
    the fit next), early stopping, the user's callback, the time limit."""
    callbacks: list[Callback] = []
    if isinstance(model, AmortizedModel):
        callbacks.append(ElboTerms(model.elbo_terms, batches.eval_x, config.seed + 3))
    if writer is not None:
        callbacks.append(writer)
    if config.early_stop:
        callbacks.append(EarlyStopping(config.window, config.min_delta))
    if callback is not None:
        callbacks.append(callback if isinstance(callback, Callback) else UserCallback(callback))
    if config.time_limit is not None:
        callbacks.append(TimeLimit(config.time_limit))
    return callbacks


def _trace_batch(data: torch.Tensor) -> tuple[tuple, dict]:
    """Arguments for one cheap traced run of a minibatch model (two rows of the data)."""
    rows = torch.arange(min(2, data.shape[0]))
    return (data[rows],), {"n_obs": data.shape[0], "subsample": rows}


# ----------------------------------------------------------------------------- posterior
def _posterior_summary(
    guide_fn: Callable, model: Any, trace_args: tuple, trace_kwargs: dict, num_draws: int
) -> tuple[Callable, list[str], bool, dict[str, torch.Tensor], dict | None]:
    """The fitted guide, the global latent sites, whether the result is a point estimate, the
    guide's point value of each site and ``(1, num_draws, ...)`` draws (``None`` for a point);
    each guide family reads its own posterior (:func:`guides.fitted_posterior`)."""
    sites = list(guides.global_latent_supports(model, *trace_args, **trace_kwargs))
    posterior = guides.fitted_posterior(guide_fn, sites, *trace_args, **trace_kwargs)
    point = posterior.is_point or num_draws == 0
    draws = posterior.draws(num_draws) if sites and not point else None
    return posterior.guide, sites, point, posterior.point(), draws
