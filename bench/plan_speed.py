"""Planning speed: ``navcache status`` on an up-to-date cache vs stat-ing the same input files.

Dataset: a synthetic NaVILA-shaped set of ``--files`` small JPEGs (``--frames`` per episode, one
folder each) and an annotation with ``--samples`` samples per episode (histories ending at evenly
spaced timesteps, as NaVILA's), poses included; stages poses + frame-features (tiny random DINOv3
at 16 px, so that building the cache once is cheap). Built once under bench/out/plan_speed/.

Baseline (tight): an ``os.scandir`` walk of the image folder calling ``stat`` on every file (every
one is named by the annotation), plus the annotation and pose files, warm page cache.
Measured side by side in one run, best of ``--repeat``:
  planning  ``plan_all`` in-process, as ``navcache status`` runs it (persisted file-hash memo,
            imports done): listing, path checks, memo lookups, fingerprints, reading the manifests
  CLI       the whole ``navcache status --split train --json`` process, for the record; its
            process start and imports are the difference, printed on their own line
Also reported, without a target: planning with the listing and fingerprint memos dropped (the
first ``status`` after an edit to the annotation or pose file, which rewrites them).
Target: planning <= 3x the walk. Every plan must be complete with nothing to build and no input
file read (else the figure measures something else and the benchmark fails). Beside the wall
clock, each side's process CPU time (user + system) is reported: on a shared machine it moves
less with the other processes' load than the wall clock does (the target is on the wall clock).

    python bench/plan_speed.py [--files 100000] [--allow-load]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import OUT, check_load, record


def make_dataset(root: Path, files: int, frames: int, samples: int) -> dict:
    """The synthetic set (idempotent: a finished one is kept); returns its shape."""
    import cv2
    import numpy as np

    episodes = files // frames
    shape = {"files": episodes * frames, "episodes": episodes, "frames_per_episode": frames, "samples_per_episode": samples}
    done = root / "shape.json"
    if done.exists() and json.loads(done.read_text()) == shape:
        return shape
    jpegs = [cv2.imencode(".jpg", np.full((16, 16, 3), (c * 7 % 256, c * 13 % 256, c), np.uint8))[1].tobytes() for c in range(256)]
    recs, poses = [], {}
    for e in range(episodes):
        d = root / "train" / f"ep{e:05d}"
        d.mkdir(parents=True, exist_ok=True)
        for k in range(frames):
            (d / f"{k:04d}.jpg").write_bytes(jpegs[(e + k) % 256])
        for s in range(1, samples + 1):
            t = max(1, round(frames * s / samples))
            vid = f"ep{e:05d}_t{t:04d}"
            recs.append({"video_id": vid, "frames": [f"ep{e:05d}/{k:04d}.jpg" for k in range(t)], "q": "walk to the door", "a": "stop"})
            poses[vid] = [[0.25 * k, 0.01 * e, 0.05 * k] for k in range(t)]
    (root / "annotations_train.json").write_text(json.dumps(recs))
    (root / "poses_train.json").write_text(json.dumps(poses))
    done.write_text(json.dumps(shape))
    return shape


def write_config(work: Path, data: Path) -> Path:
    import yaml

    from navcache.pipeline.encoders.tiny import make_random_dinov3

    model = make_random_dinov3(OUT / "models" / "dinov3-tiny-16", size="tiny", seed=0, image_size=16)
    cfg = {"cache_root": str(work / "cache"), "backend": "zarr",
           "datasets": {"synth": {"source": "navila", "root": str(data), "splits": ["train"], "stages": ["poses", "frame-features"],
                                  "options": {"num_frames": 8}, "part_size": 512}},
           "stages": {"frame-features": {"encoder": {"model": str(model), "device": "cpu"}, "pool_grid": 1, "batch_size": 256}}}
    path = work / "navcache.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def walk_stat(root: Path) -> int:
    """Baseline: every file under ``root`` stat-ed through an os.scandir walk; returns the count."""
    n, stack = 0, [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    entry.stat()
                    n += 1
    return n


def plan_once(cfg: Path) -> tuple[float, list, int, float]:
    from navcache.pipeline.config import load_config
    from navcache.pipeline.fingerprint import memo_hasher
    from navcache.pipeline.runner import ExtractOptions, plan_all
    from navcache.pipeline.summary import RunSummary

    t0, c0 = time.perf_counter(), time.process_time()
    project = load_config(cfg)
    hasher = memo_hasher(project.cache_root)
    try:
        plans = plan_all(project, ExtractOptions("train", dry_run=True), RunSummary(dry_run=True), hasher)
    finally:
        hasher.close()
    return time.perf_counter() - t0, plans, hasher.reads, time.process_time() - c0


def best(fn, repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--frames", type=int, default=20, help="frames per episode")
    ap.add_argument("--samples", type=int, default=2, help="samples (histories) per episode")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--allow-load", action="store_true", help="report even when the machine is loaded")
    a = ap.parse_args()
    load_before = check_load(a.allow_load)
    work = OUT / f"plan_speed_{a.files}_{a.frames}_{a.samples}"
    data = work / "data"
    t0 = time.perf_counter()
    shape = make_dataset(data, a.files, a.frames, a.samples)
    cfg = write_config(work, data)
    from navcache.pipeline.config import load_config
    from navcache.pipeline.runner import ExtractOptions, extract

    time.sleep(3.1)  # files written just now are inside the memo's racy window (3 s): their hashes would not be trusted
    summary = extract(load_config(cfg), ExtractOptions("train"))
    assert not summary.errors, summary.errors
    setup_s = time.perf_counter() - t0

    inputs = [data / "train", data / "annotations_train.json", data / "poses_train.json"]
    walk = lambda: _timed(lambda: walk_stat(inputs[0]) + sum(1 for p in inputs[1:] if os.stat(p)))  # noqa: E731  (wall, cpu)
    n_stat = walk_stat(inputs[0]) + 2  # warm the page cache and count
    plan_once(cfg)  # warm: imports, the encoder facts memo
    walk_s, plan_s, walk_cpu, plan_cpu = [], [], [], []
    for _ in range(a.repeat):  # interleaved, so that load changes hit both sides alike
        w, wc = walk()
        walk_s.append(w)
        walk_cpu.append(wc)
        dt, plans, reads, cpu = plan_once(cfg)
        assert all(p.finalized and not p.todo for p in plans), "the cache is not up to date: the figure would measure building"
        assert reads == 0, f"planning read {reads} input files: the memo was not used"
        plan_s.append(dt)
        plan_cpu.append(cpu)
        del plans
    # the listing and fingerprint memos dropped (as after an edit to the annotation set): the
    # first plan parses, checks and fingerprints every record again, and rewrites them
    import shutil

    memo_cold = []
    for _ in range(2):
        for name in ("listing-memo", "fingerprint-memo"):
            shutil.rmtree(work / "cache" / ".navcache" / name, ignore_errors=True)
        dt, plans, reads, cpu = plan_once(cfg)
        assert all(p.finalized and not p.todo for p in plans) and reads == 0
        memo_cold.append((dt, cpu))
        del plans
    cli = []
    for _ in range(2):
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "navcache.cli", "status", "-c", str(cfg), "--split", "train", "--json"],
                           capture_output=True, text=True, cwd=work)
        cli.append(time.perf_counter() - t)
        assert p.returncode == 0, p.stderr[-2000:]
    load_after = check_load(a.allow_load)
    ratio = min(plan_s) / min(walk_s)
    result = {
        "dataset": {**shape, "samples": shape["episodes"] * shape["samples_per_episode"], "stat_calls_baseline": n_stat},
        "walk_stat_s": round(min(walk_s), 4),
        "planning_s": round(min(plan_s), 4),
        "ratio_planning_over_walk": round(ratio, 2),
        "target": "<= 3",
        "passed": ratio <= 3,
        "walk_stat_cpu_s": round(min(walk_cpu), 4),
        "planning_cpu_s": round(min(plan_cpu), 4),
        "ratio_cpu": round(min(plan_cpu) / min(walk_cpu), 2),
        "planning_memos_dropped_s": round(min(memo_cold)[0], 4),
        "planning_memos_dropped_cpu_s": round(min(memo_cold)[1], 4),
        "cli_status_s": round(min(cli), 3),
        "cli_process_start_and_imports_s": round(min(cli) - min(plan_s), 3),
        "setup_s (generate + first extract, once)": round(setup_s, 1),
        "machine_load_before": load_before,
        "machine_load_after": load_after,
    }
    record("plan_speed", result)
    if not result["passed"]:
        raise SystemExit(1)


def _timed(fn) -> tuple[float, float]:
    """(wall, process CPU) seconds of ``fn()``."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


if __name__ == "__main__":
    main()
