"""Covisibility targets: seconds per 16-keyframe episode (240 ordered pairs) at stride-4 geometry
of 518 x 518 (130 x 130 maps) on one core, vs a straightforward per-pair numpy version.

Synthetic episode: 16 keyframes of a camera walking and turning through a box room (8 x 3 x 12 m),
VGGT-like: principal point at the image centre, world points with 1 cm noise, confidences
1 + exp(x) varying over the image, threshold at their median; all stored fp16 like the geometry
cache. The process is pinned to one core with numeric libraries at one thread.

Timed (median of --runs): ``covisibility.gather`` + ``covisibility.covisibility`` (the stage's
``prepare``). Side by side in the same run: the rule written pair by pair (for each (A, B):
mask B's points, project into A, test depth, bin with ``np.add.at``), asserted to give
identical targets.

    python -m bench.covisibility_speed [--runs 7] [--keyframes 16] [--size 518] [--stride 4]
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse
import math
import platform
import statistics
import time

import numpy as np

from bench.common import record

TARGET_S = 0.5


def episode(k: int, size: int, stride: int, seed: int = 0) -> tuple[dict, dict]:
    """Geometry rows and keyframes rows of k keyframes (every row a keyframe)."""
    rng = np.random.default_rng(seed)
    lo, hi = np.array([-4.0, -1.5, -3.0]), np.array([4.0, 1.5, 9.0])  # OpenCV axes: y down
    f = size / 2  # 90 degree field of view
    px = np.arange(0, size, stride, dtype=np.float64)
    u, v = np.meshgrid(px, px)
    n = len(px)
    rays = np.stack([(u - size / 2) / f, (v - size / 2) / f, np.ones_like(u)], -1).reshape(-1, 3)
    ext, pts, depth, conf = [], [], [], []
    for i in range(k):
        t = i / max(k - 1, 1)
        yaw = 2.5 * np.sin(2 * np.pi * t)
        rot = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])  # cam -> world
        c = np.array([-2.5 + 5 * t, 0.2 * np.sin(6 * t), -1.0 + 8 * t])
        d = rays @ rot.T
        with np.errstate(divide="ignore"):
            s = np.where(d > 0, (hi - c) / d, (lo - c) / d).min(axis=1)  # ray parameter = z-depth
        pts.append((c + d * s[:, None] + rng.normal(0, 0.01, d.shape)).reshape(n, n, 3))
        depth.append(s.reshape(n, n))
        ext.append(np.concatenate([rot.T, -(rot.T @ c)[:, None]], 1))  # camera-from-world
        conf.append(1 + np.exp(1.5 + rng.normal(0, 0.3) - 0.15 * depth[-1] + rng.normal(0, 0.3, (n, n))))
    ext = np.array(ext)
    e0 = np.vstack([ext[0], [0, 0, 0, 1]])
    inv0 = np.linalg.inv(e0)  # re-expressed in the first camera's frame, as the geometry cache is
    ext = np.array([np.vstack([e, [0, 0, 0, 1]]) @ inv0 for e in ext])[:, :3]
    world = np.einsum("ij,shwj->shwi", e0[:3, :3], np.array(pts)) + e0[:3, 3]
    conf = np.array(conf).astype(np.float16)
    intr = np.broadcast_to(np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]]), (k, 3, 3))
    geo = {"frame_index": np.arange(k) * 8, "extrinsic": ext.astype(np.float32), "intrinsic": intr.astype(np.float32),
           "depth": np.array(depth).astype(np.float16), "depth_conf": conf, "world_points": world.astype(np.float16),
           "world_points_conf": conf}
    thr = np.float32(np.median(conf.astype(np.float32)))
    keys = {"frame_index": np.arange(k) * 8, "position": np.arange(k), "threshold": np.full(k, thr, np.float32)}
    return geo, keys


def per_pair(geo: dict, keys: dict, grid: int, stride: int) -> np.ndarray:
    """The documented rule, one ordered pair at a time: targets float32 [K*(K-1), G*G+5]."""
    from navcache.pipeline.covisibility import abs_tolerance

    pos, thr = keys["position"], np.float32(keys["threshold"][0])
    h, w = geo["depth"].shape[1:]
    s, tol0, out = stride, abs_tolerance(1.0), []
    for a in pos:
        e, k = geo["extrinsic"][a].astype(np.float64), geo["intrinsic"][a].astype(np.float64)
        d_a = geo["depth"][a].astype(np.float64)
        d_a = np.where(np.isfinite(d_a) & (d_a > 0) & (geo["depth_conf"][a] > 0), d_a, 0.0)
        for b in pos:
            if a == b:
                continue
            c = geo["world_points_conf"][b].astype(np.float32)
            p = geo["world_points"][b].astype(np.float64)
            p = p[(c >= thr) & (c > np.float32(0.1)) & np.isfinite(p).all(-1)]
            cam = p @ e[:, :3].T + e[:, 3]
            z = cam[:, 2]
            counts = np.zeros(grid * grid + 5, np.int64)
            behind = z <= 0
            counts[-1] += behind.sum()
            cam, z = cam[~behind], z[~behind]
            u = (k[0, 0] * cam[:, 0] + k[0, 1] * cam[:, 1]) / z + k[0, 2]
            v = k[1, 1] * cam[:, 1] / z + k[1, 2]
            j = np.floor(np.clip(u / s + 0.5, -1.0, w + 1.0)).astype(np.int64)
            i = np.floor(np.clip(v / s + 0.5, -1.0, h + 1.0)).astype(np.int64)
            inview = (j >= 0) & (j < w) & (i >= 0) & (i < h)
            d = d_a[i[inview], j[inview]]
            zi, ui, vi = z[inview], u[inview], v[inview]
            seen = (d > 0) & (np.abs(zi - d) < tol0 + 0.005 * zi)
            gx = np.minimum(np.floor((ui[seen] + s / 2) * grid / (w * s)), grid - 1).astype(np.int64)
            gy = np.minimum(np.floor((vi[seen] + s / 2) * grid / (h * s)), grid - 1).astype(np.int64)
            np.add.at(counts, gy * grid + gx, 1)
            uo, vo = u[~inview], v[~inview]
            du, dv = (uo - s * (w - 1) / 2) / (w * s / 2), (vo - s * (h - 1) / 2) / (h * s / 2)
            horiz = np.abs(du) >= np.abs(dv)
            np.add.at(counts, grid * grid + np.where(horiz, np.where(du < 0, 0, 1), np.where(dv < 0, 2, 3)), 1)
            out.append(counts / counts.sum() if counts.sum() else counts.astype(np.float64))
    return np.array(out, np.float32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--keyframes", type=int, default=16)
    ap.add_argument("--size", type=int, default=518)
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--grid", type=int, default=16)
    a = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    from navcache.pipeline import covisibility as cv

    geo, keys = episode(a.keyframes, a.size, a.stride)

    def stage():
        return cv.covisibility(cv.gather(geo, keys), a.grid)

    out = stage()  # warm-up
    times = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        out = stage()
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ref = per_pair(geo, keys, a.grid, cv.gather(geo, keys).stride)
    t_ref = time.perf_counter() - t0
    same = bool(np.array_equal(out["target"], ref))
    med = statistics.median(times)
    res = {
        "episode": {"keyframes": a.keyframes, "pairs": len(ref), "image": a.size, "stride": a.stride,
                    "maps": int(math.ceil(a.size / a.stride)), "grid": a.grid, "points_per_keyframe_mean": float(out["n_points"].mean())},
        "stage_s_median": round(med, 4), "stage_s_min": round(min(times), 4), "stage_s_runs": [round(t, 4) for t in times],
        "ratio_to_target": round(med / TARGET_S, 3), "per_pair_s": round(t_ref, 3), "speedup_vs_per_pair": round(t_ref / med, 2),
        "identical_targets": same, "visible_fraction_mean": round(float(out["visible_fraction"].mean()), 4),
        "occluded_fraction_mean": round(float(out["occluded_fraction"].mean()), 4),
        "machine": {"cpu": platform.processor() or platform.machine(), "numpy": np.__version__, "cores_used": 1},
        "target_s": TARGET_S,
    }
    record("covisibility_speed", res)
    assert same, "vectorised and per-pair targets differ"


if __name__ == "__main__":
    main()
