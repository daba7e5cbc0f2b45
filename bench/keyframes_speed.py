"""Space-aware keyframes: seconds per 128-frame 518x518 episode on one core, vs a reference-style version.

Synthetic episode: a camera walking and turning through a box room (8 x 3 x 12 m), VGGT-like
world points on its walls, floor and ceiling (1 cm noise) and confidences 1 + exp(x), stored
fp16 like the geometry cache. ``smooth`` confidences vary over the image like VGGT's (a coarse
random field, depth falloff, a little per-pixel noise); ``iid`` draws every pixel independently,
the worst case for the masks (no runs of kept pixels). The process is pinned to one core with
numeric libraries at one thread.

What is timed (median of --runs) is the pipeline's path: ``voxel_rows`` on the float32
full-resolution maps (the geometry step; the stored fp16 values upcast, as a model's float32 maps
would come) plus ``greedy`` on the rows read back (the keyframes stage), next to a straightforward
version of the reference's steps (np.percentile over all confidences, per-frame ``np.unique`` of voxel
rows into Python sets, greedy on sets), run once per episode, and next to a plain vectorised numpy
version (``np.unique`` of (frame, voxel) keys over all kept points, greedy gains by
``np.add.reduceat``), median of 3; all three must pick the same frames with the same gains.

    python -m bench.keyframes_speed [--runs 7] [--frames 128] [--size 518] [--allow-load]
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse
import platform
import statistics
import time

import numpy as np

from bench.common import OUT, check_load, record

TARGET_S = 0.5


def room_episode(frames: int, size: int, conf_kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """points [S,H,W,3] fp16 and conf [S,H,W] fp16, cached under bench/out/."""
    path = OUT / f"keyframes_episode_{frames}x{size}_{conf_kind}_{seed}.npz"
    if path.exists():
        with np.load(path) as z:
            return z["points"], z["conf"]
    rng = np.random.default_rng(seed)
    lo, hi = np.array([-4.0, -1.5, -3.0]), np.array([4.0, 1.5, 9.0])  # OpenCV axes: y down
    half = size / 2  # 90 degree field of view
    u, v = np.meshgrid((np.arange(size) - half + 0.5) / half, (np.arange(size) - half + 0.5) / half)
    rays = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3)
    points = np.empty((frames, size, size, 3), np.float16)
    conf = np.empty((frames, size, size), np.float16)
    for f in range(frames):
        t = f / max(frames - 1, 1)
        yaw = 2.5 * np.sin(2 * np.pi * t)
        rot = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
        d, c = rays @ rot.T, np.array([-2.5 + 5 * t, 0.2 * np.sin(6 * t), -1.0 + 8 * t])
        with np.errstate(divide="ignore"):
            depth = np.where(d > 0, (hi - c) / d, (lo - c) / d).min(axis=1)
        points[f] = (c + d * depth[:, None] + rng.normal(0, 0.01, d.shape)).reshape(size, size, 3)
        if conf_kind == "smooth":
            coarse = rng.normal(0, 1.0, (9, 9))
            idx = np.linspace(0, 8, size)
            i0 = np.minimum(idx.astype(int), 7)
            w = idx - i0
            rows = coarse[i0] * (1 - w)[:, None] + coarse[i0 + 1] * w[:, None]  # bilinear upsampling
            field = rows[:, i0] * (1 - w) + rows[:, i0 + 1] * w
            x = 1.5 + field - 0.15 * depth.reshape(size, size) + rng.normal(0, 0.3, (size, size))
        else:
            x = rng.normal(1.5, 1.0, (size, size)) - 0.15 * depth.reshape(size, size)
        conf[f] = 1 + np.exp(x)
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez(path, points=points, conf=conf)
    return points, conf


def reference_style(points: np.ndarray, conf: np.ndarray, k: int) -> tuple[list[int], list[int]]:
    """The reference's steps written the obvious way: (picks in order, gains)."""
    p, c = points.astype(np.float32), conf.astype(np.float32)
    thr = np.percentile(c.reshape(-1), 50)
    keep = (c >= np.float32(thr)) & (c > np.float32(0.1))
    kept = p[keep]
    lo, hi = kept.min(axis=0), kept.max(axis=0)
    voxel = np.float32((hi - lo).min() * (np.float32(1) / np.float32(20)))  # CUDA's x / 20
    sets = []
    for f in range(len(p)):
        coords = np.floor((p[f][keep[f]] - lo) / voxel).astype(np.int64)
        sets.append(set(map(tuple, np.unique(coords, axis=0).tolist())))
    picks, gains, covered, remaining = [], [], set(), set(range(len(sets)))
    for _ in range(k):
        best, best_gain = None, -1
        for f in remaining:
            gain = len(sets[f] - covered)
            if gain > best_gain:
                best, best_gain = f, gain
        if best is None or best_gain <= 0:
            break
        picks.append(best)
        gains.append(best_gain)
        covered |= sets[best]
        remaining.remove(best)
    return picks, gains


def numpy_vectorised(points: np.ndarray, conf: np.ndarray, k: int) -> tuple[list[int], list[int]]:
    """The same steps written as plain vectorised numpy (no Python loop over points or voxels):
    one ``np.unique`` of (frame, voxel) keys over every kept point, then a greedy whose gains are
    one ``np.add.reduceat`` per round. (picks in order, gains)."""
    p, c = points.astype(np.float32), conf.astype(np.float32)
    thr = np.percentile(c.reshape(-1), 50)
    keep = (c >= np.float32(thr)) & (c > np.float32(0.1))
    frame = np.broadcast_to(np.arange(len(p))[:, None, None], keep.shape)[keep]
    kept = p[keep]
    lo, hi = kept.min(axis=0), kept.max(axis=0)
    voxel = np.float32((hi - lo).min() * (np.float32(1) / np.float32(20)))
    coords = np.floor((kept - lo) / voxel).astype(np.int64)
    dims = coords.max(axis=0) + 1
    vid = (coords[:, 0] * dims[1] + coords[:, 1]) * dims[2] + coords[:, 2]
    pairs = np.unique(frame.astype(np.int64) * int(dims.prod()) + vid)  # per-frame voxel sets, frame-major
    pair_frame = pairs // int(dims.prod())
    _, inverse = np.unique(pairs % int(dims.prod()), return_inverse=True)  # voxel ids -> 0..U-1
    starts = np.searchsorted(pair_frame, np.arange(len(p)))
    sizes = np.diff(np.append(starts, len(pairs)))
    covered = np.zeros(inverse.max() + 1, dtype=bool)
    picks, gains, taken = [], [], np.zeros(len(p), dtype=bool)
    for _ in range(k):
        new = (~covered[inverse]).astype(np.int64)
        g = np.where(sizes > 0, np.add.reduceat(new, np.minimum(starts, len(new) - 1)), 0)
        g[taken] = -1
        best = int(np.argmax(g))  # the first maximum: the lowest index, as the reference
        if g[best] <= 0:
            break
        picks.append(best)
        gains.append(int(g[best]))
        taken[best] = True
        covered[inverse[starts[best] : starts[best] + sizes[best]]] = True
    return picks, gains


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--frames", type=int, default=128)
    ap.add_argument("--size", type=int, default=518)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--conf", nargs="+", default=["smooth", "iid"], choices=["smooth", "iid"])
    ap.add_argument("--allow-load", action="store_true")
    a = ap.parse_args()
    load_before = check_load(a.allow_load)

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    from navcache.pipeline.keyframes import greedy, read_voxel_rows, uniform_on, voxel_rows

    def space_aware(points, conf, k):  # the geometry step's voxel rows, then the keyframes stage's greedy
        return greedy(read_voxel_rows(voxel_rows(points, conf, 16384)), k)

    rows = {}
    for kind in a.conf:
        points, conf = room_episode(a.frames, a.size, kind)
        points, conf = points.astype(np.float32), conf.astype(np.float32)  # what VGGT hands the geometry step
        space_aware(points, conf, a.k)  # warm-up: page in the arrays
        times = []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            sel = space_aware(points, conf, a.k)
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        uni = uniform_on(read_voxel_rows(voxel_rows(points, conf, 16384)), a.k)
        t_uniform = time.perf_counter() - t0
        t0 = time.perf_counter()
        picks, gains = reference_style(points, conf, a.k)
        t_ref = time.perf_counter() - t0
        t_np = []
        for _ in range(3):
            t0 = time.perf_counter()
            np_picks, np_gains = numpy_vectorised(points, conf, a.k)
            t_np.append(time.perf_counter() - t0)
        order = np.argsort(sel.pick_order)
        same = picks == sel.positions[order].tolist() and gains == sel.gains[order].tolist()
        same_np = np_picks == picks and np_gains == gains
        med = statistics.median(times)
        rows[kind] = {
            "space_aware_s_median": round(med, 4),
            "space_aware_s_min": round(min(times), 4),
            "space_aware_s_runs": [round(t, 4) for t in times],
            "ratio_to_target": round(med / TARGET_S, 3),
            "uniform_s": round(t_uniform, 4),
            "reference_style_s": round(t_ref, 2),
            "speedup_vs_reference_style": round(t_ref / med, 1),
            "same_as_reference_style": bool(same),
            "numpy_vectorised_s_median_of_3": round(statistics.median(t_np), 3),
            "speedup_vs_numpy_vectorised": round(statistics.median(t_np) / med, 1),
            "numpy_vectorised_same_picks": bool(same_np),
            "positions": sel.positions.tolist(),
            "n_voxels": sel.n_voxels,
            "coverage_space_aware": round(float(sel.coverage[-1]), 4),
            "coverage_uniform": round(float(uni.coverage[-1]), 4),
            "kept_fraction": round(float(np.mean(conf.astype(np.float32) >= sel.threshold)), 4),
        }
        print(kind, {k: v for k, v in rows[kind].items() if k != "positions"}, flush=True)
        assert same, "fast and reference-style selections differ"
        assert same_np, "the numpy-vectorised version picks differently"
    record(
        "keyframes_speed",
        {
            "episode": {"frames": a.frames, "height": a.size, "width": a.size, "dtype": "float32", "k": a.k},
            "target_s": TARGET_S,
            "machine": {"cpu": platform.processor() or platform.machine(), "numpy": np.__version__, "cores_used": 1},
            "conf": rows,
            "load_before": load_before,
            "load_after": check_load(a.allow_load, slack=load_before["cores"] - 1),
        },
    )


if __name__ == "__main__":
    main()
