"""``LoopConfig``: the shared training loop's settings, frozen and validated (each error names its field).

Which settings may change when a run resumes is decided in ``heads.checkpoint.resumable_changes``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch

from navcache.heads.schedule import SCHEDULES

def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class LoopConfig:
    epochs: int = 10
    batch_size: int = 32  # per rank and per micro-batch: one optimizer step sees batch_size * grad_accum * world
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    amp: str = "auto"  # "auto": bf16 autocast on CUDA, nothing on CPU | "off"
    seed: int = 0
    out_dir: str = "runs/head"
    save_every_epoch: bool = False  # also keep checkpoints/epoch_XXX.pt
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    resume: bool = False  # continue from <out_dir>/checkpoints/last.pt when it exists
    schedule: str = "constant"  # "constant" | "cosine" (down to min_lr at the last step), per optimizer step
    warmup_steps: int = 0  # linear warmup from 0 over this many optimizer steps
    min_lr: float = 0.0  # the cosine's floor (schedule "cosine" only)
    ema_decay: float = 0.0  # EMA of the trained weights, used to evaluate and in best.pt; 0 = off
    grad_accum: int = 1  # batches per optimizer step
    log_every_steps: int = 0  # running stats to train_steps.jsonl and the log; 0 = off
    eval_every_steps: int = 0  # also evaluate every N optimizer steps; 0 = at epoch ends only
    eval_max_batches: int = 0  # evaluate on the first N batches of each split; 0 = all
    save_every_steps: int = 0  # also write last.pt every N optimizer steps (mid-epoch resume); 0 = epoch ends only

    def __post_init__(self):
        def need(ok: bool, name: str, msg: str):
            if not ok:
                raise ValueError(f"LoopConfig.{name} {msg}, got {getattr(self, name)!r}")

        def number(x) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

        need(_is_int(self.epochs) and self.epochs >= 1, "epochs", "must be an int >= 1")
        need(_is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "must be an int >= 1")
        need(number(self.lr) and self.lr > 0, "lr", "must be a finite number > 0")
        need(number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(number(self.grad_clip) and self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables)")
        need(self.amp in ("auto", "off"), "amp", "must be 'auto' or 'off'")
        need(_is_int(self.seed), "seed", "must be an int")
        need(isinstance(self.out_dir, (str, os.PathLike)) and str(self.out_dir) != "", "out_dir", "must be a non-empty path")
        need(self.device == "auto" or self.device == "cpu" or str(self.device).startswith("cuda"), "device", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if str(self.device).startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"LoopConfig.device is {self.device!r} but CUDA is not available")
        need(self.schedule in SCHEDULES, "schedule", f"must be one of {list(SCHEDULES)}")
        need(number(self.min_lr) and 0 <= self.min_lr <= self.lr, "min_lr", "must be a number in [0, lr]")
        need(self.schedule == "cosine" or self.min_lr == 0, "min_lr", "applies to schedule 'cosine' only; must be 0 with 'constant'")
        need(number(self.ema_decay) and 0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1) (0 = off)")
        need(_is_int(self.grad_accum) and self.grad_accum >= 1, "grad_accum", "must be an int >= 1")
        for name in ("warmup_steps", "log_every_steps", "eval_every_steps", "eval_max_batches", "save_every_steps"):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "must be an int >= 0 (0 = off)")

    @classmethod
    def from_dict(cls, d: dict) -> "LoopConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"LoopConfig: unknown field(s) {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)


