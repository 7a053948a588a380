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

from ppl_models.infer import distributed
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
from ppl_models.infer.trainer.steps import PyroStep, Step, kl_weight

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

    Under ``torchrun`` (``batches.world > 1``) the same loop trains data-parallel: each rank
    steps on its piece of every global batch, the model's networks in
    ``DistributedDataParallel`` and Pyro's global parameters summed by hand, each rank's loss
    weighted by its share of the batch
    (:class:`~ppl_models.infer.trainer.parallel.ParallelUpdate`); rank 0's initial parameters
    are copied to every rank and rank ``r`` draws its noise from ``seed + 1000 r``.
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
        self.rank, self.world = batches.rank, batches.world
        self.fingerprint = {**config.compared(), **identity}
        if self.world > 1:
            if isinstance(step, PyroStep) and step.svi is not None:
                raise ValueError("data-parallel training takes the trainer's own Adam, not a "
                                 "Pyro optimiser (optim=): leave optim unset")
            self.fingerprint["world_size"] = self.world
        self._rank_rng: list[dict[str, Any]] = []
        self._joined = False
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
        self._join_ranks()

    def _networks(self) -> list[torch.nn.Module]:
        """The modules whose parameters DDP trains: the model, when it is an ``nn.Module``."""
        return [self.model] if isinstance(self.model, torch.nn.Module) else []

    def _distribute(self) -> None:
        """Data parallel: the step's updates through DDP (built once, after the step's lazy
        parameters exist; DDP copies rank 0's network parameters to every rank)."""
        if self.world > 1:
            self.step.distribute(self._networks(), self.world)

    def _join_ranks(self) -> None:
        """Data parallel: rank 0's parameters on every rank (the networks' by DDP, the rest
        by one broadcast), rank ``r``'s RNG seeded with ``seed + 1000 r`` (once, before the
        first epoch of a fresh fit)."""
        if self.world == 1 or self._joined:
            return
        self._distribute()
        distributed.broadcast_tensors(self._shared_tensors())
        pyro.set_rng_seed(self.config.seed + 1000 * self.rank)
        self._gather_rng()
        self._joined = True

    def _shared_tensors(self) -> list[torch.Tensor]:
        """The tensors the ranks must hold alike that DDP does not copy: the networks' buffers
        (and parameters outside DDP) and Pyro's global parameters."""
        in_ddp = {id(p) for update in self.step.parallel_updates if update.ddp is not None
                  for p in update.ddp.module.parameters()}
        tensors: list[torch.Tensor] = []
        if isinstance(self.model, torch.nn.Module):
            tensors += [t for _, t in sorted(self.model.state_dict(keep_vars=True).items())]
        store = pyro.get_param_store()
        tensors += [p for _, p in sorted(store.named_parameters())]
        return [t for t in tensors if id(t) not in in_ddp]

    def _gather_rng(self) -> None:
        """Every rank's RNG states (its noise and its transform's), for the checkpoint."""
        mine = {"pyro": rng_state(), "batches": self.batches.state_dict()}
        self._rank_rng = distributed.all_gather_objects(mine)

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
            "rng": {"pyro": rng_state(), "batches": self.batches.state_dict(),
                    **({"ranks": list(self._rank_rng)} if self.world > 1 else {})},
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
        rng = state["rng"]
        if self.world > 1:
            ranks = rng.get("ranks")
            if not isinstance(ranks, list) or len(ranks) != self.world:
                raise ValueError(f"cannot resume from {path}: it holds no RNG state for each "
                                 f"of {self.world} ranks")
            rng = ranks[self.rank]
        self.batches.load_state_dict(rng["batches"])
        set_rng_state(rng["pyro"])
        self._joined = True  # every rank restored the same parameters and its own RNG
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
                self.step.weight = self.batches.weight(i)
                value = self.step(x, n_obs=self.batches.n, subsample=rows)
                self.steps += 1
                check_finite(value, self.steps)
                total += value
                bar.update(1)
        self.history["elbo"].append(-total / len(self.batches) / self.batches.n)
        self.history["beta"].append(beta)
        self.epoch_seconds.append(time.perf_counter() - start)

    def _stopper(self) -> str | None:
        """The name of the first callback that stops the fit after this epoch, if any (rank
        0's decision in a data-parallel run)."""
        if self.world > 1:
            self._gather_rng()
        name = None
        for callback in self.callbacks:
            if callback.on_epoch_end(self.epoch, self.history):
                name = callback.name
                break
        return distributed.broadcast_object(name) if self.world > 1 else name

    def fit(self, *, progress: bool = False, desc: str = "SVI") -> TrainingRun:
        """Train from the current epoch to ``num_epochs`` or until a callback stops it."""
        config = self.config
        self._join_ranks()  # when prepare() was not called
        self._distribute()  # after a resume, which joined the ranks
        total = len(self.batches) * config.num_epochs
        validate = is_validation_enabled()
        for callback in self.callbacks:
            callback.on_train_start()
        stopped_by = "num_epochs"
        start = time.perf_counter()
        with tqdm(total=total, initial=self.steps, disable=not progress or self.rank != 0,
                  desc=desc, leave=False) as bar:
            for epoch in range(self.epoch, config.num_epochs):
                self._run_epoch(epoch, bar, validate)
                self.epoch = epoch + 1
                bar.set_postfix(epoch=self.epoch, elbo=f"{self.history['elbo'][-1]:.4f}",
                                refresh=False)
                stopper = self._stopper()
                if stopper is not None:
                    stopped_by = stopper
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
        parallel = {}
        if self.world > 1:  # how many numbers each way of reducing gradients carries
            updates = self.step.parallel_updates
            parallel = {
                "ddp_parameters": sum(p.numel() for u in updates if u.ddp is not None
                                      for p in u.ddp.module.parameters()),
                "all_reduced_parameters": sum(p.numel() for u in updates
                                              for p in u.global_params()),
            }
        return {
            **parallel,
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
            "world_size": self.world,
        }
