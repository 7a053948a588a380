"""Checkpoints of SVI fits: one file per fit, replaced atomically, enough to continue exactly.

A checkpoint is a dict of tensors and plain Python values (``torch.load(...,
weights_only=True)`` reads it, no code runs):

============== =================================================================================
key            what it holds
============== =================================================================================
mode           ``"minibatch"`` (the trainer, per epoch) or ``"full_batch"`` (per step)
epoch          epochs done (minibatch) or optimisation steps done (full batch)
seed           the fit's seed
config         the settings that decide the numbers (a resume must use the same ones, but
               may raise those listed under ``may_grow``)
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

import io
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.util
import torch

from ppl_models._shared.files import load_tensor_file
from ppl_models.infer.result_checks import check_tensor

__all__ = [
    "CHECKPOINT_NAME",
    "MAY_GROW",
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
    """Write ``directory/CHECKPOINT_NAME`` atomically (a temporary file, then ``os.replace``).

    The state is serialised in memory first, so that a failed write raises ``OSError``
    naming the file (not the ``RuntimeError`` of PyTorch's writer).
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    tmp = directory / (CHECKPOINT_NAME + ".tmp")
    tmp.write_bytes(buffer.getvalue())
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
        Naming the file: a directory, link loop or pipe; truncated; not a checkpoint (a
        pickled object is refused before it runs); one of the keys above missing or of the
        wrong type or shape.
    """
    path = Path(path).expanduser()
    if path.is_dir() and path.name != CHECKPOINT_NAME:
        path = path / CHECKPOINT_NAME
    state = load_tensor_file(path, "checkpoint", "fit_svi", missing="no checkpoint")
    problem = _state_problem(state)
    if problem:
        raise ValueError(f"corrupt checkpoint {path}: {problem}")
    if model is not None:
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"only an nn.Module model can be restored; got {type(model).__name__}")
        restore_model(model, state["model_state"], path)
    return state


# ----------------------------------------------------------------------------- validation
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _str_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) for k in value)


def _tensors(value: Any) -> bool:
    return _str_dict(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _byte_state(value: Any, size: int) -> bool:
    return (isinstance(value, torch.Tensor) and value.dtype == torch.uint8
            and tuple(value.shape) == (size,))


#: Top-level fields: name -> (test, what it must be).
_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "mode": (lambda v: isinstance(v, str) and v in _MODE_NAME, f"one of {list(_MODE_NAME)}"),
    "epoch": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "seed": (lambda v: v is None or _is_int(v), "an integer or None"),
    "config": (_str_dict, "a mapping of setting names to values"),
    "model_state": (_tensors, "a mapping of names to tensors"),
    "param_store": (_tensors, "a mapping of names to tensors"),
    "optimizer_state": (_str_dict, "a mapping"),
    "rng": (lambda v: _str_dict(v) and "pyro" in v, "a mapping with a 'pyro' entry"),
    "history": (
        lambda v: _str_dict(v) and all(
            isinstance(h, list) and all(_is_number(x) for x in h) for h in v.values()
        ),
        "a mapping of names to lists of numbers",
    ),
}


def _pyro_rng_problem(state: Any) -> str | None:
    """What is wrong with the ``rng['pyro']`` entry written by :func:`rng_state`, if anything."""
    if not _str_dict(state) or set(state) != {"torch", "random", "numpy"}:
        return "rng['pyro'] must be a mapping with 'torch', 'random' and 'numpy'"
    if not _byte_state(state["torch"], torch.get_rng_state().numel()):
        return (f"rng['pyro']['torch'] must be torch's RNG state ({torch.get_rng_state().numel()} "
                "bytes)")
    random = state["random"]
    if not (isinstance(random, tuple) and len(random) == 3 and _is_int(random[0])
            and isinstance(random[1], tuple) and len(random[1]) == 625
            and all(_is_int(x) and 0 <= x < 2**32 for x in random[1])
            and (random[2] is None or _is_number(random[2]))):
        return "rng['pyro']['random'] must be the state of Python's random module"
    numpy = state["numpy"]
    if not (isinstance(numpy, tuple) and len(numpy) == 5 and numpy[0] == "MT19937"
            and isinstance(numpy[1], torch.Tensor) and numpy[1].dtype == torch.int64
            and tuple(numpy[1].shape) == (624,) and _is_int(numpy[2]) and 0 <= numpy[2] <= 624
            and _is_int(numpy[3]) and _is_number(numpy[4])):
        return "rng['pyro']['numpy'] must be NumPy's MT19937 state (name, 624 keys, pos, ...)"
    return None


def _optimizer_problem(state: Mapping[str, Any], mode: str, params: Mapping[str, Any]) -> (
        str | None):
    if "pyro_optim" not in state:
        return "optimizer_state has no 'pyro_optim'" if mode == "full_batch" else None
    optim = state["pyro_optim"]
    if not _str_dict(optim):
        return "optimizer_state['pyro_optim'] must be a mapping of parameter names"
    for name, value in optim.items():
        if not (isinstance(value, dict) and {"state", "param_groups"} <= set(value)
                and isinstance(value["state"], dict) and isinstance(value["param_groups"], list)):
            return (f"optimizer_state['pyro_optim'][{name!r}] must be an optimiser's state "
                    "(with 'state' and 'param_groups')")
    foreign = sorted(set(optim) - set(params))
    if foreign:
        return f"optimizer_state names parameters {foreign[:3]} that param_store does not hold"
    return None


def _state_problem(state: Any) -> str | None:
    """What is wrong with a loaded checkpoint ``state``, or None (see the module's table)."""
    missing = [key for key in _KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        return f"missing {missing}"
    for name, (test, needs) in _FIELDS.items():
        if not test(state[name]):
            return f"{name} must be {needs}; got {type(state[name]).__name__} {state[name]!r:.60}"
    for group in ("model_state", "param_store"):
        for key, value in state[group].items():
            try:
                check_tensor(f"{group}[{key!r}]", value, floating=group == "param_store")
            except ValueError as exc:
                return str(exc)
    if state["mode"] == "full_batch" and "elbo" not in state["history"]:
        return "history has no 'elbo'"
    problem = _pyro_rng_problem(state["rng"]["pyro"])
    if problem:
        return problem
    batches = state["rng"].get("batches")
    if state["mode"] == "minibatch" and not (
        _str_dict(batches) and _byte_state(batches.get("generator"),
                                           torch.Generator().get_state().numel())
        and isinstance(batches.get("transform"), dict)
    ):
        return "rng['batches'] must hold the data order's generator state and the transform's"
    extra = state.get("extra", {})
    if not (_str_dict(extra) and all(
        _is_number(v) if key in ("fit_seconds", "steps") else True for key, v in extra.items()
    ) and (isinstance(extra.get("epoch_seconds", []), list)
           and all(_is_number(x) for x in extra.get("epoch_seconds", [])))):
        return "extra must be a mapping of numbers (steps, fit_seconds, epoch_seconds)"
    return _optimizer_problem(state["optimizer_state"], state["mode"], state["param_store"])


#: Key of a fingerprint listing the integer settings a resume may raise (e.g. ``num_epochs``
#: of a fit whose numbers do not depend on it); the list itself is not compared.
MAY_GROW = "may_grow"


def check_config(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse to resume with settings other than the checkpoint's, naming the first field.

    A field named in ``current[MAY_GROW]`` may be larger than the saved value (a fit extended
    by more epochs), never smaller.
    """
    growing = set(current.get(MAY_GROW, ()))
    for field, value in current.items():
        if field == MAY_GROW:
            continue
        before = saved.get(field, "<absent>")
        if field in growing and _is_int(before) and _is_int(value) and before <= value:
            continue
        if before != value:
            rule = (f"{field} may only grow" if field in growing
                    else "a resumed fit needs the same settings")
            raise ValueError(
                f"cannot resume from {path}: {field} was {before!r} and is now {value!r} "
                f"({rule}; pass overwrite=True to start afresh)"
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
