"""What a head gives the shared training loop: the ``Task`` protocol (splits in memory) or the
``StreamingTask`` protocol (splits read from disk batch by batch), and the batch source chosen from it."""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from navcache.heads.batches import BatchSource, TensorBatches
from navcache.heads.loop_config import LoopConfig

@runtime_checkable
class Task(Protocol):
    """A head whose splits fit in memory, as the loop sees it.

    model          nn.Module; only parameters with ``requires_grad`` are trained and checkpointed.
    train_arrays   {name: tensor [N, ...]}: the whole train split in memory, same N for every array.
    val_arrays     {name: tensor [M, ...]}.
    loss(model, batch) -> (scalar loss tensor, {name: float} running stats); ``model`` may be the
                   DDP wrapper, so call it rather than reaching into its submodules. A mean over the
                   batch's samples: accumulation weighs each micro-batch by its size.
    evaluate(model, arrays) -> {name: float}: metrics on a whole split (model in eval mode, no grad).
    select(metrics) -> tuple: rank of a val evaluation; the largest tuple is the best checkpoint.

    Optional, for the console (``heads.console``): ``key_metrics`` {metric: label}, the val metrics
    shown on each evaluation's line, and ``best_rule``, ``select`` in words.

    A head that streams instead (see ``StreamingTask``) replaces the arrays with
    ``train_batches(...)``, and ``evaluate`` with ``eval_batches`` + ``evaluate_batches``. A task may
    also have just one of those: ``train_batches`` wins over ``train_arrays`` for training, and
    ``evaluate_batches`` over ``evaluate`` for evaluation.
    """

    model: nn.Module
    train_arrays: dict[str, torch.Tensor]
    val_arrays: dict[str, torch.Tensor]

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]: ...

    def evaluate(self, model: nn.Module, arrays: dict[str, torch.Tensor]) -> dict[str, float]: ...

    def select(self, metrics: dict[str, float]) -> tuple: ...


@runtime_checkable
class StreamingTask(Protocol):
    """A head whose splits do not fit in memory.

    train_batches(batch_size, seed, rank, world) -> BatchSource: this rank's training batches.
    eval_batches(split, batch_size) -> iterable of batches of split "train" or "val", in a fixed
                   order; the loop may stop early (``eval_max_batches``). Every rank reads all of it.
    evaluate_batches(model, batches) -> {name: float}: metrics accumulated over ``batches``.
    """

    model: nn.Module

    def train_batches(self, batch_size: int, seed: int, rank: int, world: int) -> BatchSource: ...

    def eval_batches(self, split: str, batch_size: int) -> Any: ...

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]: ...

    def evaluate_batches(self, model: nn.Module, batches: Any) -> dict[str, float]: ...

    def select(self, metrics: dict[str, float]) -> tuple: ...


def train_source(task: Any, cfg: LoopConfig, rank: int, world: int) -> BatchSource:
    """The task's own ``BatchSource``, or ``TensorBatches`` over its ``train_arrays``."""
    if hasattr(task, "train_batches"):
        return task.train_batches(batch_size=cfg.batch_size, seed=cfg.seed, rank=rank, world=world)
    return TensorBatches(task.train_arrays, cfg.batch_size, seed=cfg.seed, rank=rank, world=world)




def check_same_layout(splits: tuple[str, str], train_info: dict, val_info: dict, keys) -> None:
    """ValueError naming the first of ``keys`` whose value differs between the train and val
    splits' load info (a model built for one split's shapes cannot read the other's)."""
    for k in keys:
        if train_info[k] != val_info[k]:
            raise ValueError(f"{splits[0]} and {splits[1]} caches differ in {k}: {train_info[k]!r} vs {val_info[k]!r}")
