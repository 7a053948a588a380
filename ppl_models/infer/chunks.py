r"""Reading a 2-D array a block of rows at a time, with memory bounded by the block.

The arrays are tensors, NumPy arrays or memory-mapped ``.npy`` files
(:func:`numpy.load` with ``mmap_mode``, or :func:`ppl_models.data.open_npy`). A memory map
reads its rows from disk on first touch, and the pages it has read stay in the process's
resident set until the kernel needs them back; :func:`iter_chunks` therefore releases each
block's pages (``madvise(MADV_DONTNEED)``, which for a read-only or copy-on-write mapping of a
file only drops the cached view) once the block has been copied out, so the resident memory of
a pass over a file larger than RAM stays about one block.

Each block is validated as it is read (finite, real numbers: :func:`ppl_models.data.check_data`
on the block, with the row range in the message), so no check needs the whole array.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import numpy as np
import torch

from ppl_models.data import check_data

__all__ = ["DEFAULT_CHUNK_ROWS", "iter_chunks", "n_rows", "take_rows"]

#: Rows per block when none is given: 65,536 rows of 10 float64 features are 5 MB, and the
#: E-step's temporaries of K components about ``K`` times that.
DEFAULT_CHUNK_ROWS = 1 << 16

Array = torch.Tensor | np.ndarray


def n_rows(data: Array) -> int:
    """Rows of a 2-D array (``ValueError`` for another shape)."""
    if data.ndim != 2:
        raise ValueError(f"data: expected a 2-D array (n_samples, n_features), got shape "
                         f"{tuple(data.shape)}")
    return int(data.shape[0])


def _release(array: np.ndarray, start: int, stop: int) -> None:
    """Drop the resident pages of rows ``[start, stop)`` of a memory-mapped array."""
    base = array.base if isinstance(array, np.memmap) else None
    if not isinstance(base, mmap.mmap) or not array.flags.c_contiguous:
        return
    # np.memmap maps from the offset rounded down to the allocation granularity.
    head = array.offset % mmap.ALLOCATIONGRANULARITY
    row = array.strides[0]
    first = head + start * row
    last = head + stop * row
    page = mmap.PAGESIZE
    lo = first - first % page
    length = last - last % page - lo
    if length > 0:
        base.madvise(mmap.MADV_DONTNEED, lo, length)


def _to_tensor(block: Array, dtype: torch.dtype, name: str) -> torch.Tensor:
    if isinstance(block, np.ndarray):
        block = np.ascontiguousarray(block)
    return check_data(block, name=name).to(dtype)


def iter_chunks(
    data: Array, chunk_size: int, dtype: torch.dtype = torch.float64
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(first row, block)`` pairs covering ``data`` in order, each block a validated
    ``(<= chunk_size, D)`` tensor of ``dtype`` (a copy: later changes do not reach ``data``).

    Raises
    ------
    ValueError
        A block holds NaN, infinite or non-numeric values (naming its rows).
    """
    n = n_rows(data)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        block = _to_tensor(data[start:stop], dtype, f"data rows {start}..{stop - 1}")
        if isinstance(data, np.memmap):
            _release(data, start, stop)
        yield start, block


def take_rows(data: Array, index: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Rows ``index`` (in that order) of ``data`` as a validated tensor of ``dtype``; a
    memory map reads only those rows (in increasing order)."""
    index = np.asarray(index, dtype=np.int64)
    order = np.argsort(index, kind="stable")
    rows = data[torch.from_numpy(index[order])] if isinstance(data, torch.Tensor) else (
        data[index[order]])
    block = _to_tensor(rows, dtype, f"data (rows {index.min()}..{index.max()}, sampled)")
    out = torch.empty_like(block)
    out[torch.from_numpy(order)] = block
    return out
