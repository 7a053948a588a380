"""The epoch loop of the minibatch trainer, and its state for checkpoints and exact resume."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer.util import is_validation_enabled
from tqdm.auto import tqdm

from ppl_models.infer.checkpoint import (
    check_config,
    param_store_state,
    restore_model,
    restore_param_store,
    rng_state,
    set_rng_state,
)
from ppl_models.infer.stopping import check_finite, plateau
from ppl_models.infer.trainer.batches import Batches
from ppl_models.infer.trainer.callbacks import Callback
from ppl_models.infer.trainer.config import TrainerConfig
from ppl_models.infer.trainer.steps import Step, kl_weight

__all__ = ["Trainer", "TrainingRun"]


@dataclass(frozen=True)
class TrainingRun:
    """What a trainer returns: the history, whether it converged, time, and facts for
    ``FitResult.info``."""

    history: dict[str, list[float]]
    converged: bool
    fit_seconds: float
    info: dict[str, Any]


class Trainer:
    """Epochs of ``step`` over ``batches``, then the callbacks, as ``config`` says.

    In epoch ``e`` (0-based) the step's KL weight is ``kl_weight(e, kl_warmup_epochs)``;
    ``history["elbo"]`` gets the mean over the epoch's steps of the objective per observation
    and ``history["beta"]`` the weight. Pyro's validation (when enabled) runs on the first
    step of each epoch only. ``identity`` names what else a resumed fit must share with its
    checkpoint (the model, guide, step and transform) beside the compared fields of
    ``config``.
    """

    def __init__(
        self,
        model: Any,
        step: Step,
        batches: Batches,
        config: TrainerConfig,
        identity: dict[str, Any],
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.model, self.step, self.batches, self.config = model, step, batches, config
        self.fingerprint = {**config.compared(), **identity}
        self.callbacks = list(callbacks)
        self.epoch, self.steps = 0, 0
        self.history: dict[str, list[float]] = {"elbo": [], "beta": []}
        self.epoch_seconds: list[float] = []
        self.seconds_before = 0.0
        self.resumed_from: int | None = None

    def prepare(self) -> None:
        """Let the step create its lazy parameters and optimisers (on the evaluation batch)."""
        rows = self.batches.eval_rows[:2]
        x = self.batches.eval_x[:2]
        self.step.prepare(x, n_obs=self.batches.n, subsample=rows)

    # ------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue (see :mod:`ppl_models.infer.checkpoint`)."""
        model = self.model
        return {
            "mode": "minibatch",
            "epoch": self.epoch,
            "seed": self.config.seed,
            "config": dict(self.fingerprint),
            "model_state": model.state_dict() if isinstance(model, torch.nn.Module) else {},
            "param_store": param_store_state(),
            "optimizer_state": self.step.state_dict(),
            "rng": {"pyro": rng_state(), "batches": self.batches.state_dict()},
            "history": {name: list(values) for name, values in self.history.items()},
            "extra": {
                "steps": self.steps,
                "epoch_seconds": list(self.epoch_seconds),
            },
        }

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        """Continue from a checkpoint ``state`` read from ``path`` (same settings required)."""
        check_config(state["config"], self.fingerprint, path)
        restore_model(self.model, state["model_state"], path)
        restore_param_store(state["param_store"], path)
        self.step.load_state_dict(state["optimizer_state"])
        self.batches.load_state_dict(state["rng"]["batches"])
        set_rng_state(state["rng"]["pyro"])
        self.epoch = self.resumed_from = int(state["epoch"])
        self.history = {name: list(values) for name, values in state["history"].items()}
        extra = state.get("extra", {})
        self.steps = int(extra.get("steps", 0))
        self.epoch_seconds = list(extra.get("epoch_seconds", []))
        self.seconds_before = float(sum(self.epoch_seconds))

    # ------------------------------------------------------------------------- loop
    def _run_epoch(self, epoch: int, bar: tqdm, validate: bool) -> None:
        start = time.perf_counter()
        beta = kl_weight(epoch, self.config.kl_warmup_epochs)
        self.step.beta = beta
        total = 0.0
        with ExitStack() as stack:
            for i, (x, rows) in enumerate(self.batches):
                if i == 1 and validate:
                    stack.enter_context(pyro.validation_enabled(False))
                value = self.step(x, n_obs=self.batches.n, subsample=rows)
                self.steps += 1
                check_finite(value, self.steps)
                total += value
                bar.update(1)
        self.history["elbo"].append(-total / len(self.batches) / self.batches.n)
        self.history["beta"].append(beta)
        self.epoch_seconds.append(time.perf_counter() - start)

    def _stopper(self) -> Callback | None:
        """The first callback that stops the fit after this epoch, if any."""
        for callback in self.callbacks:
            if callback.on_epoch_end(self.epoch, self.history):
                return callback
        return None

    def fit(self, *, progress: bool = False, desc: str = "SVI") -> TrainingRun:
        """Train from the current epoch to ``num_epochs`` or until a callback stops it."""
        config = self.config
        total = len(self.batches) * config.num_epochs
        validate = is_validation_enabled()
        for callback in self.callbacks:
            callback.on_train_start()
        stopped_by = "num_epochs"
        start = time.perf_counter()
        with tqdm(total=total, initial=self.steps, disable=not progress, desc=desc,
                  leave=False) as bar:
            for epoch in range(self.epoch, config.num_epochs):
                self._run_epoch(epoch, bar, validate)
                self.epoch = epoch + 1
                bar.set_postfix(epoch=self.epoch, elbo=f"{self.history['elbo'][-1]:.4f}",
                                refresh=False)
                stopper = self._stopper()
                if stopper is not None:
                    stopped_by = stopper.name
                    break
        converged = plateau(self.history["elbo"], config.window, config.min_delta)
        if config.early_stop:
            converged = stopped_by == "early_stop"
        return TrainingRun(
            history=self.history,
            converged=converged,
            fit_seconds=self.seconds_before + time.perf_counter() - start,
            info=self._info(stopped_by),
        )

    def _info(self, stopped_by: str) -> dict[str, Any]:
        return {
            "objective": self.step.name,
            "batch_size": self.batches.batch_size,
            "num_epochs": len(self.epoch_seconds),
            "steps_per_epoch": len(self.batches),
            "num_steps": self.steps,
            "kl_warmup_epochs": self.config.kl_warmup_epochs,
            "eval_batch": int(self.batches.eval_x.shape[0]),
            "epoch_seconds": self.epoch_seconds,
            "stopped_by": stopped_by,
            "resumed_from": self.resumed_from,
        }
