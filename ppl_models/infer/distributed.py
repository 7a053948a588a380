r"""The few collective operations the package uses, on PyTorch's own distributed engine.

Processes are launched by ``torchrun`` (``torchrun --nproc_per_node N -m ppl_models ...``),
which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_from_env` joins the process group they describe, on the backend and device
:func:`select_device` chooses (gloo on the CPU; NCCL on ``cuda:LOCAL_RANK`` when CUDA is
available). Everything else here is a thin wrapper over :mod:`torch.distributed` that is the
identity in a single process, so that the same code runs with one process or many:

=========================== ===============================================================
function                    what it does across ranks
=========================== ===============================================================
:func:`world`               ``(rank, world_size)``; ``(0, 1)`` without a process group
:func:`select_device`       this rank's backend and device (``cuda:LOCAL_RANK`` with NCCL)
:func:`all_reduce_sum`      element-wise sum of one tensor (one ``all_reduce``)
:func:`all_gather_objects`  every rank's picklable value, in rank order
:func:`broadcast_object`    rank 0's picklable value on every rank
:func:`broadcast_tensors`   rank 0's tensors copied in place on every rank (one flat buffer)
:func:`all_reduce_gradients` weighted gradients and loss summed over ranks (one flat buffer)
=========================== ===============================================================
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_objects",
    "all_reduce_gradients",
    "all_reduce_sum",
    "broadcast_object",
    "broadcast_tensors",
    "init_from_env",
    "is_distributed",
    "select_device",
    "world",
]


def is_distributed() -> bool:
    """Whether a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def select_device(backend: str | None = None) -> tuple[str, torch.device]:
    """The backend and device of this process: ``("nccl", cuda:LOCAL_RANK)`` when CUDA is
    available, ``("gloo", cpu)`` otherwise.

    ``backend`` given: ``"nccl"`` needs CUDA and takes GPU ``LOCAL_RANK`` (0 when unset, one
    process per GPU); any other backend (``"gloo"``) runs on the CPU.

    Raises
    ------
    ValueError
        ``"nccl"`` without CUDA, or ``LOCAL_RANK`` not a GPU of this machine.
    """
    cuda = torch.cuda.is_available()
    if backend is None:
        backend = "nccl" if cuda else "gloo"
    if backend != "nccl":
        return backend, torch.device("cpu")
    if not cuda:
        raise ValueError("backend 'nccl' needs CUDA, which is not available here; use 'gloo'")
    raw = os.environ.get("LOCAL_RANK", "0")
    count = torch.cuda.device_count()
    if not (raw.isdigit() and int(raw) < count):
        raise ValueError(f"LOCAL_RANK={raw!r} names no GPU of this machine ({count} visible): "
                         f"start at most {count} processes per machine (--nproc_per_node)")
    return backend, torch.device("cuda", int(raw))


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group ``torchrun`` describes in the environment, if any.

    Does nothing (and returns False) when ``WORLD_SIZE`` is unset or 1, or when a group is
    already initialised (returns True then). The backend is :func:`select_device`'s (NCCL when
    CUDA is available, gloo otherwise); with NCCL, ``cuda:LOCAL_RANK`` becomes this process's
    current CUDA device (``torch.cuda.set_device``). Models and data stay where the caller
    put them: move them to that device before fitting.

    Raises
    ------
    ValueError
        ``WORLD_SIZE`` is set but not a positive integer.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"WORLD_SIZE must be a positive integer; got {raw!r}")
    if size == 1:
        return False
    backend, device = select_device(backend)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    atexit.register(_leave)
    return True


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over every rank, in place (unchanged in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order (``[value]`` in a single process)."""
    if not is_distributed():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (``value`` itself in a single process)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_tensors(tensors: Sequence[torch.Tensor]) -> None:
    """Copy rank 0's values of ``tensors`` into every rank's, in place, in one broadcast."""
    if not is_distributed() or not tensors:
        return
    with torch.no_grad():
        flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
        dist.broadcast(flat, src=0)
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t).to(t.dtype))
            offset += n


def all_reduce_gradients(params: Sequence[torch.Tensor], loss: torch.Tensor,
                         weight: float) -> float:
    r"""Replace each parameter's gradient by :math:`\sum_r w_r g_r` over the ranks, and return
    :math:`\sum_r w_r \ell_r`, in one ``all_reduce`` of a flat float64 buffer.

    The trainer uses it for the parameters outside DDP (Pyro's global parameters), with
    :math:`w_r = 1 / W` on losses already weighted by :math:`W b_r / B`
    (:mod:`ppl_models.infer.trainer.parallel`), so that the sum is DDP's mean. A parameter
    without a gradient on this rank contributes zeros.
    """
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.detach().reshape(-1).to(torch.float64) for g in grads]
                     + [loss.detach().reshape(1).to(torch.float64)])
    flat.mul_(weight)
    all_reduce_sum(flat)
    offset = 0
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            summed = flat[offset : offset + n].view_as(g).to(g.dtype)
            if p.grad is None:
                p.grad = summed
            else:
                p.grad.copy_(summed)
            offset += n
    return float(flat[-1])
