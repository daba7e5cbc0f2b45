"""Processes, devices and seeds: what a training process needs to know about where it runs."""
from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.distributed as dist


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA). Same seed on CPU => identical runs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def global_mean(values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean of ``values`` [n] (weights [n], default 1) whose gradient under DDP is that of
    the mean over ALL ranks' elements.

    DDP averages gradients over ranks, so a per-rank mean gives the mean of per-rank means: wrong
    whenever ranks hold different amounts of weight (masked steps, sample weights). While grad is
    enabled in a multi-rank run, the weight sum is all-reduced and the result scaled by the world
    size; elsewhere (one process, evaluation) this is the plain weighted mean. n may be 0.
    """
    w = torch.ones_like(values) if weights is None else weights.to(values.dtype)
    denom, scale = w.sum().detach(), 1.0
    if torch.is_grad_enabled() and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        denom = denom.clone()
        dist.all_reduce(denom)
        scale = float(dist.get_world_size())
    return scale * (values * w).sum() / denom.clamp_min(1e-12)


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) when not launched by it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def pick_device(device: str, local_rank: int, world: int) -> torch.device:
    """``device`` ("auto" | "cpu" | "cuda" | "cuda:N") resolved; one GPU per rank under DDP."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if world > 1:
        return torch.device("cuda", local_rank)
    return torch.device("cuda") if device == "auto" else torch.device(device)


def is_master() -> bool:
    return dist_env()[0] == 0
