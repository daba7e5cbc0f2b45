"""Action chunks built when read, as LeRobot's ``delta_timestamps`` build them.

A ``robot_meta`` cache stores one action per frame; a policy with horizon H wants, at frame i,
the actions at i + d for each offset d (``round(t * fps)`` of ``delta_timestamps``, LeRobot's
``get_delta_indices``), clamped to the frame's episode, with ``is_pad`` True where i + d falls
outside it (LeRobotDataset ``_get_query_indices``). Building them at read time costs one gather
and keeps the cache H times smaller.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["chunk_offsets", "gather_chunks"]


def chunk_offsets(horizon: int | None = None, *, delta_timestamps: Sequence[float] | None = None, fps: float | None = None,
                  tolerance_s: float = 1e-4) -> np.ndarray:
    """int64 [H] frame offsets: ``range(horizon)`` (openpi's ``[t / fps for t in range(H)]``), or
    ``round(d * fps)`` of ``delta_timestamps``, each of which must be a multiple of 1/fps within
    ``tolerance_s`` (ValueError naming the ones that are not, as LeRobot's check does)."""
    if (horizon is None) == (delta_timestamps is None):
        raise ValueError("give exactly one of horizon or delta_timestamps")
    if horizon is not None:
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
        return np.arange(horizon, dtype=np.int64)
    if not fps or fps <= 0:
        raise ValueError(f"delta_timestamps need fps > 0, got {fps!r}")
    d = np.asarray(delta_timestamps, np.float64)
    off = np.abs(d * fps - np.round(d * fps)) / fps > tolerance_s
    if off.any():
        raise ValueError(f"delta_timestamps {d[off].tolist()} are not multiples of 1/{fps} within tolerance_s {tolerance_s}")
    return np.round(d * fps).astype(np.int64)


def gather_chunks(values: np.ndarray, episode_index: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """values [N, ...] (rows of whole episodes, each episode's rows contiguous and in frame order),
    episode_index [N], offsets int [H] -> (chunks [N, H, ...], is_pad bool [N, H]).

    Row i's chunk holds ``values[clamp(i + d, start, end - 1)]`` for its episode's rows
    [start, end); ``is_pad`` marks i + d outside them. ValueError when an episode's rows are split.
    """
    ep = np.asarray(episode_index)
    n = len(ep)
    if len(values) != n:
        raise ValueError(f"values has {len(values)} rows, episode_index {n}")
    cut = np.flatnonzero(ep[1:] != ep[:-1]) + 1
    starts = np.concatenate([[0], cut]).astype(np.int64)
    ends = np.concatenate([cut, [n]]).astype(np.int64)
    if len(np.unique(ep[starts])) != len(starts):
        raise ValueError("an episode's rows are not contiguous in episode_index")
    run = np.repeat(np.arange(len(starts)), ends - starts)
    lo, hi = starts[run][:, None], ends[run][:, None]
    q = np.arange(n)[:, None] + np.asarray(offsets, np.int64)[None, :]
    is_pad = (q < lo) | (q >= hi)
    return np.asarray(values)[np.clip(q, lo, hi - 1)], is_pad
