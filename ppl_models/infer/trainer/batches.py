"""The data side of the trainer: shuffled minibatches of row indices, a batch transform, and a
fixed evaluation batch, all seeded, with their generator states for checkpoints.

Data-parallel runs (``world > 1`` ranks, as ``DistributedSampler`` does): every rank draws the
same permutation per epoch from the seed and cuts it into the same global batches of
``batch_size`` rows; rank ``r`` takes the ``r``-th of ``world`` near-equal contiguous pieces
of each global batch (``torch.tensor_split``), so one epoch has as many steps as in one
process and the ranks together see every row once. A rank whose piece is empty (a last batch
with fewer rows than ranks) takes the batch's first row with weight 0 (:meth:`Batches.weight`).
The data are indexed, never copied: a memory-mapped tensor reads only the rows drawn."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from ppl_models.images import RandomTransform
from ppl_models.infer import distributed

__all__ = ["Batches"]


class _Rows(torch.utils.data.Dataset):
    """Rows of a tensor indexed by a whole batch of indices at once (no per-row collation)."""

    def __init__(self, data: torch.Tensor, transform: Callable | None = None) -> None:
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.data[index]
        if self.transform is not None:
            rows = self.transform(rows)
        return rows, index


class _ShuffledBatches(torch.utils.data.Sampler):
    """A fresh seeded permutation per epoch, cut into index tensors of ``batch_size``, of
    which rank ``rank`` of ``world`` takes its piece."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, rank: int = 0,
                 world: int = 1) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        batches = torch.randperm(self.n, generator=self.generator).split(self.batch_size)
        if self.world == 1:
            return iter(batches)
        return (self._piece(batch) for batch in batches)

    def _piece(self, batch: torch.Tensor) -> torch.Tensor:
        piece = batch.tensor_split(self.world)[self.rank]
        return piece if piece.numel() else batch[:1]


class Batches:
    """Shuffled batches ``(x, rows)`` of ``data`` from a ``DataLoader`` with a seeded generator.

    ``rank`` and ``world`` default to the process group's (:func:`ppl_models.infer.distributed.
    world`): in a data-parallel run each rank iterates over its pieces of the global batches.

    Each epoch draws a fresh permutation; ``transform`` (e.g.
    :class:`ppl_models.images.DynamicBinarizer`) is applied to every batch drawn. The
    evaluation batch, ``min(N, batch_size)`` rows chosen by the same generator before the
    first epoch, passes once through ``eval_transform``, so it is the same in every epoch.
    """

    def __init__(
        self,
        data: torch.Tensor,
        batch_size: int,
        seed: int,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        eval_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        rank: int | None = None,
        world: int | None = None,
    ) -> None:
        self.n = data.shape[0]
        self.batch_size = min(batch_size, self.n)
        here = distributed.world()
        self.rank = here[0] if rank is None else rank
        self.world = here[1] if world is None else world
        rank, world = self.rank, self.world
        self.generator = torch.Generator().manual_seed(seed)
        self.transform = transform
        self.loader = torch.utils.data.DataLoader(
            _Rows(data, transform),
            sampler=_ShuffledBatches(self.n, self.batch_size, self.generator, rank, world),
            batch_size=None,
        )
        self.eval_rows = torch.randperm(self.n, generator=self.generator)[: self.batch_size]
        x = data[self.eval_rows]
        self.eval_x = eval_transform(x) if eval_transform is not None else x

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.loader)

    def weight(self, step: int) -> float:
        """This rank's share ``b_r / B`` of global batch ``step`` (0-based) of an epoch: 1 in
        one process, 0 for a rank whose piece is empty."""
        if self.world == 1:
            return 1.0
        size = min(self.batch_size, self.n - step * self.batch_size)
        return (size // self.world + (self.rank < size % self.world)) / size

    def state_dict(self) -> dict[str, Any]:
        """The generators' states: the data order's and the transform's (if it draws)."""
        transform = self.transform
        return {
            "generator": self.generator.get_state(),
            "transform": transform.state_dict() if isinstance(transform, RandomTransform) else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        if isinstance(self.transform, RandomTransform):
            self.transform.load_state_dict(state["transform"])
