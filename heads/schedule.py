"""Per-optimizer-step learning rate: linear warmup, then constant or cosine down to a floor.

``lr_factor`` is the closed form; ``make_scheduler`` hands it to torch's ``LambdaLR``, whose
``state_dict`` (plain ints and floats) is checkpointed, so a resumed run continues the schedule at
exactly the step it stopped. The factor is a closed form of the step rather than a chain of
torch's ``LinearLR`` / ``CosineAnnealingLR`` under ``SequentialLR``: those update the rate
recursively (each step from the previous rate), so float error accumulates over a long run, and
``LinearLR`` cannot start from 0.
"""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("constant", "cosine")


def lr_factor(step: int, *, schedule: str, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the base lr for optimizer step ``step`` (0-based: the first step is 0).

    Warmup (``step < warmup_steps``): ``(step + 1) / warmup_steps``, a line from 0 (at step -1) to 1
    (at the last warmup step), so no step is wasted at lr 0. Then ``constant``: 1; ``cosine``:
    ``min_ratio + (1 - min_ratio) * (1 + cos(pi * p)) / 2`` with ``p = (step - warmup_steps) /
    (total_steps - warmup_steps)`` clipped to [0, 1], i.e. torch's ``CosineAnnealingLR`` with
    ``T_max = total_steps - warmup_steps`` and ``eta_min = min_ratio * lr``, shifted by the warmup.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    p = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


def make_scheduler(optimizer: torch.optim.Optimizer, *, schedule: str, lr: float, warmup_steps: int, total_steps: int,
                   min_lr: float) -> LambdaLR:
    """A ``LambdaLR`` over ``optimizer`` (every group at base ``lr``) following ``lr_factor``; step it
    once after every ``optimizer.step()``. ``total_steps`` is the run's number of optimizer steps."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    ratio = min_lr / lr

    def factor(step: int) -> float:
        return lr_factor(step, schedule=schedule, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=ratio)

    return LambdaLR(optimizer, factor)
