"""The step loop of full-batch SVI, with checkpoints every few steps and exact resume."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from pyro.infer import SVI, TraceEnum_ELBO
from tqdm.auto import tqdm

from ppl_models.infer.checkpoint import (
    CheckpointDir,
    check_config,
    param_store_state,
    restore_model,
    restore_param_store,
    rng_state,
    set_rng_state,
)
from ppl_models.infer.collapsed_svi import CollapsedELBO, supports_guide
from ppl_models.infer.compiled_potential import NUTSPotential
from ppl_models.infer.mixture_potential import mixture_potential
from ppl_models.infer.potential import CollapsedPotential
from ppl_models.infer.stopping import check_finite, plateau
from ppl_models.infer.trainer.loop import TrainingRun
from ppl_models.models import CollapsedPosterior

__all__ = ["FullBatchConfig", "collapsed_svi", "run_full_batch"]


@dataclass(frozen=True)
class FullBatchConfig:
    """Settings of a full-batch fit that decide its numbers (compared when resuming)."""

    num_steps: int
    lr: float
    lr_decay: float
    num_particles: int
    early_stop: bool
    window: int
    min_delta: float
    seed: int


@dataclass
class _Progress:
    history: list[float]
    seconds_before: float = 0.0
    resumed_from: int | None = None


def _state(model: Any, svi: SVI, config: dict, progress: _Progress, seed: int) -> dict:
    return {
        "mode": "full_batch",
        "epoch": len(progress.history),
        "seed": seed,
        "config": dict(config),
        "model_state": model.state_dict() if isinstance(model, torch.nn.Module) else {},
        "param_store": param_store_state(),
        "optimizer_state": {"pyro_optim": svi.optim.get_state()},
        "rng": {"pyro": rng_state()},
        "history": {"elbo": list(progress.history)},
        "extra": {"fit_seconds": progress.seconds_before},
    }


def _resume(model: Any, svi: SVI, data: torch.Tensor, fingerprint: dict,
            checkpoint: CheckpointDir) -> _Progress:
    """Restore parameters, optimiser state and RNG from the checkpoint being continued."""
    state, path = checkpoint.resumed, checkpoint.file
    check_config(state["config"], fingerprint, path)
    with torch.random.fork_rng(devices=[]):
        svi.evaluate_loss(data)  # creates the guide's parameters, to be overwritten
    restore_model(model, state["model_state"], path)
    restore_param_store(state["param_store"], path)
    svi.optim.set_state(state["optimizer_state"]["pyro_optim"])
    set_rng_state(state["rng"]["pyro"])
    seconds = float(state.get("extra", {}).get("fit_seconds", 0.0))
    return _Progress(list(state["history"]["elbo"]), seconds, int(state["epoch"]))


def collapsed_svi(model: Any, svi: SVI, data: torch.Tensor, compile: bool = False) -> SVI:
    """``svi`` with its ``TraceEnum_ELBO`` replaced by the closed-form
    :class:`~ppl_models.infer.collapsed_svi.CollapsedELBO` (same estimator, same draws, no
    traces) when the model's posterior is in closed form and the guide is one it serves;
    otherwise ``svi`` itself. The potential energy is the plain-tensor
    :class:`~ppl_models.infer.mixture_potential.MixturePotential` where the model has one,
    compiled with ``torch.compile`` when ``compile`` (see
    :mod:`ppl_models.infer.compiled_potential`)."""
    elbo = getattr(svi.loss, "__self__", None)  # SVI keeps the ELBO's bound methods
    if not (
        isinstance(model, CollapsedPosterior)
        and isinstance(elbo, TraceEnum_ELBO)
        and supports_guide(svi.guide)
    ):
        return svi
    potential = CollapsedPotential(model, data)
    fast = mixture_potential(potential)
    energy = None if fast is None else NUTSPotential(fast, compile=compile)
    loss = CollapsedELBO(potential, num_particles=elbo.num_particles, energy=energy)
    return SVI(svi.model, svi.guide, svi.optim, loss.loss, loss_and_grads=loss.loss_and_grads)


def run_full_batch(
    model: Any,
    svi: SVI,
    data: torch.Tensor,
    config: FullBatchConfig,
    *,
    identity: dict[str, Any],
    checkpoint: CheckpointDir | None = None,
    checkpoint_every: int = 100,
    progress: bool = False,
    desc: str = "SVI",
    collapsed: bool = True,
) -> TrainingRun:
    """``num_steps`` SVI steps on all of ``data``; a checkpoint every ``checkpoint_every``
    steps and at the end when ``checkpoint`` is given (continuing the one it holds).

    With ``collapsed`` (the default) the loss is computed in closed form where
    :func:`collapsed_svi` can (``info["loss"]`` names the loss used)."""
    if collapsed:
        svi = collapsed_svi(model, svi, data)
    fingerprint = {**asdict(config), **identity}
    run = _Progress([])
    if checkpoint is not None and checkpoint.resumed is not None:
        run = _resume(model, svi, data, fingerprint, checkpoint)
    history, n = run.history, data.shape[0]
    stopped_by = "num_steps"
    start = time.perf_counter()
    with tqdm(total=config.num_steps, initial=len(history), disable=not progress, desc=desc,
              leave=False) as bar:
        while len(history) < config.num_steps:
            value = svi.step(data)
            check_finite(value, len(history) + 1)
            history.append(-value / n)
            bar.update(1)
            if len(history) % 50 == 0:
                bar.set_postfix(elbo=f"{history[-1]:.4f}", refresh=False)
            stop = config.early_stop and plateau(history, config.window, config.min_delta)
            if stop:
                stopped_by = "early_stop"
            last = stop or len(history) == config.num_steps
            if checkpoint is not None and (last or len(history) % checkpoint_every == 0):
                run.seconds_before += time.perf_counter() - start
                start = time.perf_counter()
                checkpoint.save(_state(model, svi, fingerprint, run, config.seed))
            if stop:
                break
    converged = plateau(history, config.window, config.min_delta)
    if config.early_stop:
        converged = stopped_by == "early_stop"
    info = {
        "stopped_by": stopped_by,
        "resumed_from": run.resumed_from,
        "loss": type(getattr(svi.loss, "__self__", svi.loss)).__name__,
    }
    if checkpoint is not None:
        info["checkpoint"] = str(checkpoint.file)
    return TrainingRun({"elbo": history}, converged, run.seconds_before + time.perf_counter()
                       - start, info)
