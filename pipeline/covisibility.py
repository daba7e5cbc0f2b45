"""Where the content of keyframe B appears in keyframe A's view: covisibility targets from cached geometry.

For an ordered pair (A, B) of an episode's keyframes, B's confident world points are moved into
A's camera (OpenCV, camera-from-world ``[R | t]``: x_A = R_A p + t_A) and projected with A's
intrinsic (model-input pixels). Each point then lands in exactly one of ``G*G + 5`` cells, or is
dropped as occluded:

* **in view**: its nearest sample of A's strided maps, ``(i, j) = (floor(v/s + 1/2), floor(u/s + 1/2))``,
  lies inside A's ``h x w`` maps (s = the geometry stride). A's image is thus the box the map
  samples cover, ``u in [-s/2, w*s - s/2)``, ``v in [-s/2, h*s - s/2)``, split into a ``G x G``
  grid (cell ``gy*G + gx``, ``gx = floor((u + s/2) * G / (w*s))``). The point counts as visible
  when A's depth there is valid (finite, > 0, ``depth_conf`` > 0) and agrees with the point's
  depth ``z`` in A: ``|z - D_A| < (0.1 + 0.1 ln 2) * units_per_metre + 0.005 z``. That is
  MapAnything's covisibility test (absolute 0.1 m, relative 0.005, temperature 0.1 entering as
  ``- ln(0.5) * 0.1``), with the metric terms scaled by ``units_per_metre`` for providers in a
  normalised scale (VGGT). A point in view that fails it is **occluded**: it is dropped from
  the target (counted in ``occluded_fraction``), since it is not where B's content appears.
* **out of view** (ring cells ``G*G + r``, r in ``RING`` order): ``behind`` when ``z <= 0``;
  otherwise by the dominant direction of the projection from the image centre: with
  ``du = (u - uc) / (w*s/2)`` and ``dv = (v - vc) / (h*s/2)``, ``left``/``right`` (sign of du)
  when ``|du| >= |dv|``, else ``above``/``below`` (sign of dv; image v grows downwards).

``target`` is the fraction of the kept (not occluded) points per cell, summing to 1; a pair whose
every point is occluded has an all-zero target and ``kept_fraction`` 0 (a cross-entropy against
it is zero, so such a row trains nothing). Confident points are Spatial-MLLM's rule, as the
keyframes stage uses it: ``conf >= threshold`` (the episode's 50th percentile, the keyframes
rows' ``threshold``) and ``conf > 0.1``, finite.

Why hand-written: the projection, the depth lookup and the binning are a few numpy array
expressions; no maintained library bins reprojections into a grid plus direction ring, and the
vectorised form (every B point against one A at once, one ``bincount`` per A) is what makes an
episode of 240 pairs take a fraction of a second.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from navcache.cache_specs.specs.covisibility import RING  # out-of-view ring cells, after the G*G grid cells

#: MapAnything's depth-association constants: absolute (metres), relative, temperature
ABS_TOL_M, REL_TOL, TEMP = 0.1, 0.005, 0.1


def abs_tolerance(units_per_metre: float) -> float:
    """The absolute term of the depth test in world units: (0.1 - ln(0.5) * 0.1) m."""
    return (ABS_TOL_M - math.log(0.5) * TEMP) * units_per_metre


@dataclass(frozen=True)
class KeyframeGeometry:
    """An episode's keyframes as the covisibility maths reads them (K keyframes, maps h x w).

    points: list of K float64 [N_b, 3] confident world points; extrinsic float64 [K, 3, 4];
    intrinsic float64 [K, 3, 3]; depth float64 [K, h, w], 0 where invalid; stride s (map pixel
    (i, j) is input pixel (i*s, j*s)); frame_index / position int64 [K] (source frame, geometry row).
    """

    points: list[np.ndarray]
    extrinsic: np.ndarray
    intrinsic: np.ndarray
    depth: np.ndarray
    stride: int
    frame_index: np.ndarray
    position: np.ndarray


def infer_stride(intrinsic: np.ndarray, h: int, w: int) -> int:
    """The geometry stride from a principal point near the image centre: ``2 c / map size``.

    Providers put the principal point at (or within a pixel of) the centre of the model input,
    so ``2 cx / w`` and ``2 cy / h`` are the stride up to rounding. Raises ValueError when the two
    axes disagree or are far from an integer (then set ``stages.covisibility.stride``).
    """
    su, sv = 2.0 * intrinsic[:, 0, 2] / w, 2.0 * intrinsic[:, 1, 2] / h
    s = np.rint(np.concatenate([su, sv]))
    if not (np.all(s == s[0]) and s[0] >= 1 and np.abs(np.concatenate([su, sv]) - s[0]).max() < 0.25):
        raise ValueError(
            f"cannot infer the geometry stride from principal points ({float(su.min()):.3g}..{float(su.max()):.3g} x, "
            f"{float(sv.min()):.3g}..{float(sv.max()):.3g} y times 2 / map size); set stages.covisibility.stride"
        )
    return int(s[0])


def _bad_camera(extrinsic: np.ndarray, intrinsic: np.ndarray) -> str | None:
    if not np.isfinite(extrinsic).all():
        return "extrinsic is not finite"
    if abs(np.linalg.det(extrinsic[:, :3])) < 1e-6:
        return "extrinsic rotation is not invertible"
    if not np.isfinite(intrinsic).all():
        return "intrinsic is not finite"
    if abs(intrinsic[0, 0] * intrinsic[1, 1]) < 1e-12 or not np.allclose(intrinsic[2], (0.0, 0.0, 1.0)):
        return "intrinsic is not an invertible pinhole matrix"
    return None


def gather(geo: dict, keys: dict, stride: int | None = None) -> KeyframeGeometry:
    """The keyframes' geometry out of an episode's ``geometry`` and ``keyframes`` rows.

    Raises ValueError(reason) for what makes a pair meaningless: fewer than 2 keyframes, a
    keyframe whose geometry row is missing, a degenerate camera, a keyframe without a confident point.
    """
    pos = np.asarray(keys["position"], np.int64)
    frames = np.asarray(keys["frame_index"], np.int64)
    if len(pos) < 2:
        raise ValueError(f"{len(pos)} keyframe(s): no pair to relate")
    n = len(geo["frame_index"])
    missing = [int(f) for p, f in zip(pos, frames) if not (0 <= p < n and int(geo["frame_index"][p]) == f)]
    if missing:
        raise ValueError(f"geometry rows missing for keyframes at frames {missing} (episode has {n} geometry rows)")
    ext = np.asarray(geo["extrinsic"], np.float64)[pos]
    intr = np.asarray(geo["intrinsic"], np.float64)[pos]
    for k in range(len(pos)):
        why = _bad_camera(ext[k], intr[k])
        if why:
            raise ValueError(f"degenerate camera at keyframe frame {int(frames[k])}: {why}")
    thr = np.float32(np.asarray(keys["threshold"])[0])
    points = []
    for k, p in enumerate(pos):
        wp = np.asarray(geo["world_points"][p], np.float64)
        conf = np.asarray(geo["world_points_conf"][p], np.float32)
        ok = (conf >= thr) & (conf > np.float32(0.1)) & np.isfinite(wp).all(-1)
        if not ok.any():
            raise ValueError(f"keyframe at frame {int(frames[k])} has no confident world point "
                             f"(every pair with it as B is empty)")
        points.append(wp[ok])
    depth = np.asarray(geo["depth"], np.float64)[pos]
    dconf = np.asarray(geo["depth_conf"], np.float32)[pos]
    depth = np.where(np.isfinite(depth) & (depth > 0) & (dconf > 0), depth, 0.0)
    h, w = depth.shape[1:]
    s = infer_stride(intr, h, w) if stride is None else int(stride)
    return KeyframeGeometry(points, ext, intr, depth, s, frames, pos)


def _cells_in(kg: KeyframeGeometry, a: int, pts: np.ndarray, grid: int, units_per_metre: float) -> np.ndarray:
    """Cell of every point ``pts`` [N, 3] in keyframe a's view -> int64 [N] (-1 occluded)."""
    e, k, s = kg.extrinsic[a], kg.intrinsic[a], kg.stride
    h, w = kg.depth.shape[1:]
    cam = pts @ e[:, :3].T + e[:, 3]
    z = cam[:, 2]
    front = z > 0
    zs = np.where(front, z, 1.0)  # behind points take the ring's last cell whatever they project to
    u = (k[0, 0] * cam[:, 0] + k[0, 1] * cam[:, 1]) / zs + k[0, 2]
    v = k[1, 1] * cam[:, 1] / zs + k[1, 2]
    # clipped first so that huge projections (z -> 0+) never overflow the integer cast
    j = np.floor(np.clip(u / s + 0.5, -1.0, w + 1.0)).astype(np.int64)
    i = np.floor(np.clip(v / s + 0.5, -1.0, h + 1.0)).astype(np.int64)
    inview = front & (j >= 0) & (j < w) & (i >= 0) & (i < h)
    d = kg.depth[a][np.clip(i, 0, h - 1), np.clip(j, 0, w - 1)]
    seen = (d > 0) & (np.abs(z - d) < abs_tolerance(units_per_metre) + REL_TOL * z)
    gx = np.minimum(np.floor((u + s / 2) * grid / (w * s)), grid - 1)
    gy = np.minimum(np.floor((v + s / 2) * grid / (h * s)), grid - 1)
    du, dv = (u - s * (w - 1) / 2) / (w * s / 2), (v - s * (h - 1) / 2) / (h * s / 2)
    horiz = np.abs(du) >= np.abs(dv)
    ring = np.where(horiz, np.where(du < 0, 0, 1), np.where(dv < 0, 2, 3))
    ring = np.where(front, ring, 4)
    cell = np.where(inview, np.where(seen, gy * grid + gx, -1), grid * grid + ring)
    return cell.astype(np.int64)


def covisibility(kg: KeyframeGeometry, grid: int = 16, units_per_metre: float = 1.0) -> dict[str, np.ndarray]:
    """Every ordered pair (A, B), A != B, in row order A-major: K*(K-1) rows.

    Returns target float32 [P, G*G+5]; visible_fraction, occluded_fraction, kept_fraction
    float32 [P] (of B's confident points: in view and visible; in view and occluded; not
    occluded); n_points int64 [P]; frame_a, frame_b, position_a, position_b, keyframe_a,
    keyframe_b int64 [P].
    """
    nk, ncell = len(kg.points), grid * grid + len(RING)
    sizes = np.array([len(p) for p in kg.points], np.int64)
    owner = np.repeat(np.arange(nk), sizes)  # keyframe of each stacked point
    stacked = np.concatenate(kg.points)
    counts = np.empty((nk, nk, ncell + 1), np.int64)
    for a in range(nk):  # every B at once against A: one projection and one bincount per A
        cell = _cells_in(kg, a, stacked, grid, units_per_metre)
        counts[a] = np.bincount(owner * (ncell + 1) + cell + 1, minlength=nk * (ncell + 1)).reshape(nk, ncell + 1)
    a_idx, b_idx = np.nonzero(~np.eye(nk, dtype=bool))
    return _rows(counts[a_idx, b_idx], a_idx, b_idx, kg, grid)


def _rows(counts: np.ndarray, a_idx: np.ndarray, b_idx: np.ndarray, kg: KeyframeGeometry, grid: int) -> dict[str, np.ndarray]:
    """Pair rows from per-pair counts [P, 1 + G*G + 5] (column 0: occluded)."""
    n = counts.sum(1)
    kept = counts[:, 1:]
    total = kept.sum(1, keepdims=True)
    target = np.divide(kept, total, out=np.zeros(kept.shape, np.float64), where=total > 0)
    return {
        "target": target.astype(np.float32),
        "visible_fraction": (kept[:, : grid * grid].sum(1) / n).astype(np.float32),
        "occluded_fraction": (counts[:, 0] / n).astype(np.float32),
        "kept_fraction": (total[:, 0] / n).astype(np.float32),
        "n_points": n.astype(np.int64),
        "frame_a": kg.frame_index[a_idx].astype(np.int64),
        "frame_b": kg.frame_index[b_idx].astype(np.int64),
        "position_a": kg.position[a_idx].astype(np.int64),
        "position_b": kg.position[b_idx].astype(np.int64),
        "keyframe_a": a_idx.astype(np.int64),
        "keyframe_b": b_idx.astype(np.int64),
    }
