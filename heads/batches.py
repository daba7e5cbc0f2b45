"""Where training batches come from: the ``BatchSource`` protocol and its in-memory implementation.

The loop reads every training batch from a ``BatchSource``. A head whose splits fit in memory gives
tensors and the loop wraps them in ``TensorBatches`` (a shuffled index, cut into batches, each
gathered with ``tensor[idx]``); a head that streams from disk gives its own source. Either way the
loop has one code path, and a checkpoint taken in the middle of an epoch stores the source's
``state_dict`` so that a resumed run reads exactly the batches the interrupted one had left.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class BatchSource(Protocol):
    """Training batches of ONE rank for one epoch at a time.

    set_epoch(e)        select epoch ``e``'s order and start at its first batch.
    __iter__()          yield the epoch's remaining batches, {name: tensor [b, ...]}, advancing the
                        position as it goes (a batch counts as read once it has been yielded).
    __len__()           batches per epoch for this rank; the same on every rank under DDP, since
                        DDP synchronises every optimizer step.
    state_dict()        {name: int}: enough to continue where the reading stopped (epoch, position).
    load_state_dict(s)  continue from ``s``; the loop calls it after ``set_epoch`` of the same epoch.
    """

    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]: ...

    def __len__(self) -> int: ...

    def state_dict(self) -> dict[str, int]: ...

    def load_state_dict(self, state: dict[str, int]) -> None: ...


class TensorBatches:
    """``BatchSource`` over in-memory tensors {name: tensor [N, ...]} (same N for every one).

    Each epoch shuffles with its own generator, seeded by (seed, epoch) and so identical on every
    rank; rank r of ``world`` takes ``perm[r * (N // world) : (r + 1) * (N // world)]`` (equal shards,
    the remainder left out that epoch), cut into batches of ``batch_size``, the last one shorter.
    ``shuffle=False`` keeps the stored order (evaluation).
    """

    def __init__(self, arrays: dict[str, torch.Tensor], batch_size: int, *, seed: int = 0, rank: int = 0, world: int = 1,
                 shuffle: bool = True):
        sizes = {len(v) for v in arrays.values()}
        if len(sizes) != 1:
            raise ValueError(f"arrays must all have the same first dimension, got {sorted(sizes)}")
        self.arrays, self.batch_size = arrays, batch_size
        self.seed, self.rank, self.world, self.shuffle = seed, rank, world, shuffle
        self.n = sizes.pop()
        self.epoch, self.position = 0, 0
        self._shard = self._order(0)

    def _order(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices [N // world] for ``epoch``."""
        if not self.shuffle:
            perm = torch.arange(self.n)
        else:
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        if self.world == 1:
            return perm
        per_rank = self.n // self.world
        return perm[self.rank * per_rank : (self.rank + 1) * per_rank]

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0
        self._shard = self._order(epoch)

    def __len__(self) -> int:
        return -(-len(self._shard) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while self.position < len(self):
            idx = self._shard[self.position * self.batch_size : (self.position + 1) * self.batch_size]
            self.position += 1  # before the yield: a batch handed out counts as read
            yield {k: v[idx] for k, v in self.arrays.items()}

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["epoch"]) != self.epoch:
            self.set_epoch(int(state["epoch"]))
        self.position = int(state["position"])


def batch_len(batch: dict[str, Any]) -> int:
    """Number of samples in a batch: the first dimension of its first tensor."""
    return len(next(iter(batch.values())))


def evaluate_split(task: Any, model: torch.nn.Module, split: str, batch_size: int, max_batches: int = 0) -> dict[str, float]:
    """Evaluate ``model`` on ``split`` ("train" or "val") of ``task``; ``max_batches`` > 0 bounds it.

    Two contracts, whichever the task has:
      * ``task.evaluate_batches(model, batches)`` with ``task.eval_batches(split, batch_size)``: an
        iterable of batches in a fixed order, for splits that cannot be loaded whole; the loop hands
        over the first ``max_batches`` of them (all with 0);
      * ``task.evaluate(model, arrays)`` on ``task.<split>_arrays``: the whole split at once, or its
        first ``max_batches * batch_size`` samples.
    """
    if hasattr(task, "evaluate_batches"):
        batches: Iterable = task.eval_batches(split, batch_size)
        if max_batches:
            batches = islice(batches, max_batches)
        return task.evaluate_batches(model, batches)
    arrays = getattr(task, f"{split}_arrays")
    if max_batches:
        arrays = {k: v[: max_batches * batch_size] for k, v in arrays.items()}
    return task.evaluate(model, arrays)
