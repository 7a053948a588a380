"""Checkpoints of SVI fits: one file per fit, replaced atomically, enough to continue exactly.

A checkpoint is a dict of tensors and plain Python values (``torch.load(...,
weights_only=True)`` reads it, no code runs):

============== =================================================================================
key            what it holds
============== =================================================================================
mode           ``"minibatch"`` (the trainer, per epoch) or ``"full_batch"`` (per step)
epoch          epochs done (minibatch) or optimisation steps done (full batch)
seed           the fit's seed
config         the settings that decide the numbers (a resume must use the same ones)
model_state    the model's ``state_dict()`` when it is an ``nn.Module`` (else ``{}``)
param_store    Pyro's parameters, unconstrained
optimizer_state every optimiser's and learning-rate scheduler's state
rng            Pyro's RNG state (torch, python, numpy) and the data side's generators
history        the objective history so far
extra          bookkeeping (steps, epoch seconds, training seconds)
============== =================================================================================

:func:`open_checkpoint_dir` decides what a fit does with a folder that may already hold one:
continue it (``resume=True``), discard it (``overwrite=True``), or refuse with one line.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.util
import torch

__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointDir",
    "check_config",
    "load_checkpoint",
    "open_checkpoint_dir",
    "restore_param_store",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

#: File name of the checkpoint written into ``checkpoint_dir``.
CHECKPOINT_NAME = "checkpoint.pt"

_KEYS = (
    "mode", "epoch", "seed", "config", "model_state", "param_store", "optimizer_state", "rng",
    "history",
)
_UNIT = {"minibatch": "epoch", "full_batch": "step"}
_MODE_NAME = {"minibatch": "a minibatch fit", "full_batch": "a full-batch fit"}


# ----------------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    """Pyro's RNG state (torch, python ``random``, numpy) as tensors and plain values."""
    state = pyro.util.get_rng_state()
    name, keys, pos, has_gauss, cached = state["numpy"]
    return {
        "torch": state["torch"],
        "random": state["random"],
        "numpy": (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                  int(has_gauss), float(cached)),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a state returned by :func:`rng_state`."""
    name, keys, pos, has_gauss, cached = state["numpy"]
    pyro.util.set_rng_state({
        "torch": state["torch"],
        "random": state["random"],
        "numpy": (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached),
    })


# ----------------------------------------------------------------------------- parameters
def param_store_state() -> dict[str, torch.Tensor]:
    """Copies of Pyro's parameters, unconstrained."""
    return {
        name: value.detach().clone() for name, value in pyro.get_param_store().named_parameters()
    }


def restore_param_store(saved: dict[str, torch.Tensor], path: Path) -> None:
    """Copy saved unconstrained values into the (already created) parameters of the store."""
    current = dict(pyro.get_param_store().named_parameters())
    foreign = sorted(set(saved) ^ set(current))
    if foreign:
        raise ValueError(
            f"cannot resume from {path}: its Pyro parameters differ from this fit's "
            f"(e.g. {foreign[:3]}): another model or guide wrote it"
        )
    with torch.no_grad():
        for name, value in saved.items():
            if current[name].shape != value.shape:
                raise ValueError(
                    f"cannot resume from {path}: parameter {name!r} has shape "
                    f"{tuple(value.shape)} there and {tuple(current[name].shape)} here"
                )
            current[name].copy_(value)


def restore_model(model: Any, state: dict[str, Any], path: Path) -> None:
    """Load ``model_state`` into an ``nn.Module`` model (a ``ValueError`` if it does not fit)."""
    if not isinstance(model, torch.nn.Module):
        return
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"cannot resume from {path}: the networks differ ({first})") from None


# ----------------------------------------------------------------------------- files
def save_checkpoint(directory: Path, state: dict[str, Any]) -> None:
    """Write ``directory/CHECKPOINT_NAME`` atomically (a temporary file, then ``os.replace``)."""
    tmp = directory / (CHECKPOINT_NAME + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, directory / CHECKPOINT_NAME)


def load_checkpoint(path: str | os.PathLike[str], model: Any = None) -> dict[str, Any]:
    """Read a checkpoint written by :func:`fit_svi` (``weights_only=True``: no code runs).

    Parameters
    ----------
    path : path
        The checkpoint file, or the ``checkpoint_dir`` holding it.
    model : nn.Module, optional
        If given, its networks are restored from ``model_state``.

    Returns
    -------
    dict
        The keys listed in this module's docstring.

    Raises
    ------
    FileNotFoundError
        No checkpoint at ``path``.
    ValueError
        The file is truncated, not a checkpoint, or lacks one of the keys above.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint")
    try:
        state = torch.load(path, weights_only=True)
    except PermissionError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        # A truncated archive surfaces as RuntimeError or OSError (EINVAL), other bytes as
        # UnpicklingError.
        raise ValueError(
            f"corrupt checkpoint {path}: truncated, or not written by fit_svi "
            f"({type(exc).__name__})"
        ) from None
    missing = [key for key in _KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"corrupt checkpoint {path}: missing {missing}")
    if state["mode"] not in _MODE_NAME:
        raise ValueError(f"corrupt checkpoint {path}: unknown mode {state['mode']!r}")
    if model is not None:
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"only an nn.Module model can be restored; got {type(model).__name__}")
        restore_model(model, state["model_state"], path)
    return state


def check_config(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse to resume with settings other than the checkpoint's, naming the first field."""
    for field, value in current.items():
        before = saved.get(field, "<absent>")
        if before != value:
            raise ValueError(
                f"cannot resume from {path}: {field} was {before!r} and is now {value!r} "
                "(a resumed fit needs the same settings; pass overwrite=True to start afresh)"
            )


@dataclass(frozen=True)
class CheckpointDir:
    """Where a fit writes its checkpoint, and the checkpoint it continues (if any)."""

    path: Path
    resumed: dict[str, Any] | None

    @property
    def file(self) -> Path:
        return self.path / CHECKPOINT_NAME

    def save(self, state: dict[str, Any]) -> None:
        save_checkpoint(self.path, state)


def open_checkpoint_dir(
    directory: str | os.PathLike[str], *, mode: str, resume: bool, overwrite: bool
) -> CheckpointDir:
    """The checkpoint folder of a fit in ``mode``, after deciding what to do with its contents.

    A folder without a checkpoint is created if needed (with ``resume=True`` too: the fit
    then starts afresh). A folder with one is continued with ``resume=True`` (its mode must be
    ``mode``; its settings are checked later by :func:`check_config`), emptied of it with
    ``overwrite=True``, and otherwise refused with a one-line ``ValueError``, the file left
    untouched.
    """
    if resume and overwrite:
        raise ValueError("pass resume=True or overwrite=True, not both")
    path = Path(directory).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"checkpoint_dir {path} is a file, not a folder")
    file = path / CHECKPOINT_NAME
    if not file.exists():
        path.mkdir(parents=True, exist_ok=True)
        return CheckpointDir(path, None)
    if overwrite:
        file.unlink()
        return CheckpointDir(path, None)
    state = load_checkpoint(file)
    unit = _UNIT[state["mode"]]
    if not resume:
        raise ValueError(
            f"{path} holds a checkpoint from {unit} {state['epoch']}: pass resume=True to "
            "continue it or remove it (overwrite=True discards it)"
        )
    if state["mode"] != mode:
        raise ValueError(
            f"cannot resume from {file}: it was written by {_MODE_NAME[state['mode']]} and "
            f"this is {_MODE_NAME[mode]}"
        )
    return CheckpointDir(path, state)
