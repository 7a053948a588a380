"""Checkpoints of minibatch fits: one file per fit, replaced atomically after every epoch."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pyro
import torch

__all__ = ["CHECKPOINT_NAME", "load_checkpoint", "save_checkpoint"]

#: File name of the checkpoint written into ``checkpoint_dir`` after every epoch.
CHECKPOINT_NAME = "checkpoint.pt"

_KEYS = ("epoch", "seed", "model_state", "param_store", "optimizer_state", "history")


def save_checkpoint(
    path: Path, model: Any, optimizer: Any, history: dict, epoch: int, seed: int
) -> None:
    """Write ``path/CHECKPOINT_NAME`` (tensors and plain values only; see fit_svi)."""
    state = {
        "epoch": epoch,
        "seed": seed,
        "model_state": model.state_dict() if isinstance(model, torch.nn.Module) else {},
        "param_store": {
            name: value.detach().clone()
            for name, value in pyro.get_param_store().named_parameters()
        },
        "optimizer_state": optimizer.state_dict()
        if isinstance(optimizer, torch.optim.Optimizer)
        else {},
        "history": {name: list(values) for name, values in history.items()},
    }
    tmp = path / (CHECKPOINT_NAME + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path / CHECKPOINT_NAME)


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
        ``epoch``, ``seed``, ``model_state``, ``param_store``, ``optimizer_state``,
        ``history``.

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
    if model is not None:
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"only an nn.Module model can be restored; got {type(model).__name__}")
        model.load_state_dict(state["model_state"])
    return state

