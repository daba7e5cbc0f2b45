"""Frame sampling rules, kept bit-identical to the models whose encoders we cache.

A cache is only useful if its frames are the frames the model saw, so these functions restate the
upstream rules exactly (including numpy's float-to-int truncation) rather than "improving" them.
"""
from __future__ import annotations

import operator

import numpy as np

__all__ = ["navila_indices", "uniform_indices"]


def _as_int(value: object, name: str, minimum: int) -> int:
    """``value`` as a Python int >= ``minimum``; bools and floats are refused (ValueError/TypeError)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool {value!r}")
    try:
        out = operator.index(value)  # accepts int and numpy integers, refuses 8.0 and "8"
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None
    if out < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {out}")
    return out


def navila_indices(n: int, t: int = 8) -> tuple[np.ndarray, int]:
    """NaVILA's ``vlnce_frame_sampling`` (llava/mm_utils.py) as indices into ``n`` frames.

    Returns ``(indices, n_pad)``: ``indices`` is int64 [t]; padding rows come first and hold -1.

    Upstream, with ``frames`` the list of ``n`` observations:
      * n < t: black images are inserted at the front until there are t frames; the rule below then
        runs on that padded list. On a list of exactly t frames the rule selects every position, so
        the result is t - n padding rows followed by frames 0..n-1.
      * n >= t: ``np.linspace(0, n - 1, num=t - 1, endpoint=False, dtype=int)`` followed by the
        latest frame n - 1 (the current observation is always kept). n == t gives 0..t-1.
    Upstream n == 0 returns t black 448x448 images; here n >= 1 is required, because an episode
    without frames is quarantined before sampling.

    Example: n=49, t=8 -> [0, 6, 13, 20, 27, 34, 41, 48], n_pad=0.
    """
    n = _as_int(n, "n", 1)
    t = _as_int(t, "t", 2)
    if n < t:
        n_pad = t - n
        idx = np.concatenate([np.full(n_pad, -1, dtype=np.int64), np.arange(n, dtype=np.int64)])
        return idx, n_pad
    head = np.linspace(0, n - 1, num=t - 1, endpoint=False, dtype=int)
    return np.append(head, n - 1).astype(np.int64), 0


def uniform_indices(n: int, k: int) -> np.ndarray:
    """``k`` frame indices spread evenly over ``n`` frames, first and last included (Spatial-MLLM).

    Returns int64 [min(k, n)] = ``np.linspace(0, n - 1, min(k, n)).astype(int)``; k > n gives all
    frames 0..n-1 once each.
    """
    n = _as_int(n, "n", 1)
    k = _as_int(k, "k", 1)
    return np.linspace(0, n - 1, min(k, n)).astype(int).astype(np.int64)
