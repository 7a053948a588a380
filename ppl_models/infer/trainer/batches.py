"""The data side of the trainer: shuffled minibatches of row indices, a batch transform, and a
fixed evaluation batch, all seeded, with their generator states for checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from ppl_models.images import RandomTransform

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
    """A fresh seeded permutation per epoch, cut into index tensors of ``batch_size``."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(torch.randperm(self.n, generator=self.generator).split(self.batch_size))


class Batches:
    """Shuffled batches ``(x, rows)`` of ``data`` from a ``DataLoader`` with a seeded generator.

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
    ) -> None:
        self.n = data.shape[0]
        self.batch_size = min(batch_size, self.n)
        self.generator = torch.Generator().manual_seed(seed)
        self.transform = transform
        self.loader = torch.utils.data.DataLoader(
            _Rows(data, transform),
            sampler=_ShuffledBatches(self.n, self.batch_size, self.generator),
            batch_size=None,
        )
        self.eval_rows = torch.randperm(self.n, generator=self.generator)[: self.batch_size]
        x = data[self.eval_rows]
        self.eval_x = eval_transform(x) if eval_transform is not None else x

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.loader)

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
