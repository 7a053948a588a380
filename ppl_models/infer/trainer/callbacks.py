"""Callbacks of the trainer: called after every epoch, any of them may stop the fit.

``on_epoch_end(epoch, history) -> bool`` (``epoch`` counts from 1, ``history`` so far);
returning True stops the fit and names it in ``info["stopped_by"]``. The trainer calls them
in order and stops at the first that says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from ppl_models.infer.checkpoint import CheckpointDir
from ppl_models.infer.stopping import plateau

__all__ = [
    "Callback", "CheckpointWriter", "EarlyStopping", "ElboTerms", "TimeLimit", "UserCallback",
]

History = dict[str, list[float]]


class Callback:
    """Base class: does nothing and never stops the fit."""

    name = "callback"

    def on_train_start(self) -> None:
        """Called once before the first epoch of this session."""

    def on_epoch_end(self, epoch: int, history: History) -> bool:
        return False


class ElboTerms(Callback):
    """Append the model's ELBO terms per observation on a fixed batch, with fixed noise.

    ``terms_fn(x)`` returns per-observation terms (``elbo_terms`` of the VAE family); they
    are averaged at :math:`\\beta = 1`, the noise drawn from ``seed`` in a forked RNG, so the
    global RNG is untouched.
    """

    name = "elbo_terms"

    def __init__(self, terms_fn: Callable, x: torch.Tensor, seed: int) -> None:
        self.terms_fn, self.x, self.seed = terms_fn, x, seed

    def on_epoch_end(self, epoch: int, history: History) -> bool:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            terms = self.terms_fn(self.x)
            for name, value in terms.items():
                history.setdefault(name, []).append(float(value.mean()))
        return False


class CheckpointWriter(Callback):
    """Write the trainer's state (``state()``) into the checkpoint folder after every epoch."""

    name = "checkpoint"

    def __init__(self, directory: CheckpointDir, state: Callable[[], dict[str, Any]]) -> None:
        self.directory, self.state = directory, state

    def on_epoch_end(self, epoch: int, history: History) -> bool:
        self.directory.save(self.state())
        return False


class EarlyStopping(Callback):
    """Stop when the ELBO trace is flat: :func:`ppl_models.infer.stopping.elbo_convergence`
    over the last two windows of ``window`` epochs, with tolerance ``min_delta``."""

    name = "early_stop"

    def __init__(self, window: int, min_delta: float) -> None:
        self.window, self.min_delta = window, min_delta

    def on_epoch_end(self, epoch: int, history: History) -> bool:
        return plateau(history["elbo"], self.window, self.min_delta)


class UserCallback(Callback):
    """A user's ``fn(epoch, history)``; a true return value stops the fit."""

    name = "callback"

    def __init__(self, fn: Callable[[int, History], bool | None]) -> None:
        if not callable(fn):
            raise ValueError(f"callback must be callable; got {fn!r}")
        self.fn = fn

    def on_epoch_end(self, epoch: int, history: History) -> bool:
        return bool(self.fn(epoch, history))


class TimeLimit(Callback):
    """Start no new epoch once ``seconds`` of this session have passed."""

    name = "time_limit"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()

    def on_train_start(self) -> None:
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch: int, history: History) -> bool:
        return time.perf_counter() - self.start >= self.seconds
