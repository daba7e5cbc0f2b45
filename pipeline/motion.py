"""Planar motion between consecutive poses, and its binning into NaVILA-like discrete steps.

Default edges are aligned with NaVILA's action space (forward 25/50/75 cm, turns 15/30/45 degrees,
stop): bins sit centred on those values.
    dist bins (metres, edges 0.125 0.375 0.625 0.875): 0 ~stop, 1 ~25 cm, 2 ~50 cm, 3 ~75 cm, 4 more
    yaw bins (degrees, edges -52.5 -37.5 -22.5 -7.5 7.5 22.5 37.5 52.5), positive = left (CCW):
        0 right > 45, 1 right 45, 2 right 30, 3 right 15, 4 straight, 5 left 15, 6 left 30, 7 left 45, 8 left > 45
"""
from __future__ import annotations

import numpy as np

DIST_EDGES_M: tuple[float, ...] = (0.125, 0.375, 0.625, 0.875)
YAW_EDGES_DEG: tuple[float, ...] = (-52.5, -37.5, -22.5, -7.5, 7.5, 22.5, 37.5, 52.5)


def wrap_angle(a: np.ndarray) -> np.ndarray:
    """Wrap radians to (-pi, pi]."""
    w = np.mod(a + np.pi, 2 * np.pi) - np.pi
    return np.where(w == -np.pi, np.pi, w)


def egocentric_deltas(poses: np.ndarray) -> np.ndarray:
    """poses [T, 3] (x, y, yaw) -> deltas [T-1, 3] (dx forward, dy left, dyaw) in frame t's egocentric frame."""
    p = np.asarray(poses, dtype=np.float64)
    d = p[1:, :2] - p[:-1, :2]
    c, s = np.cos(p[:-1, 2]), np.sin(p[:-1, 2])
    fwd = c * d[:, 0] + s * d[:, 1]
    left = -s * d[:, 0] + c * d[:, 1]
    return np.stack([fwd, left, wrap_angle(p[1:, 2] - p[:-1, 2])], axis=1)


def bin_steps(deltas: np.ndarray, dist_edges=DIST_EDGES_M, yaw_edges_deg=YAW_EDGES_DEG) -> tuple[np.ndarray, np.ndarray]:
    """deltas [S, 3] -> (dist_bins [S] int64, yaw_bins [S] int64) with ``np.digitize``."""
    dist = np.hypot(deltas[:, 0], deltas[:, 1])
    return np.digitize(dist, dist_edges).astype(np.int64), np.digitize(np.degrees(deltas[:, 2]), yaw_edges_deg).astype(np.int64)
