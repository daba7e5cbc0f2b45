"""Small real datasets on disk for pipeline tests (independent of the demo world, and fast)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]


def make_navila(root: Path, n_episodes: int = 6, size: int = 48, seed: int = 0) -> Path:
    """NaVILA layout: annotations_train.json, poses_train.json, train/<ep>/frame_XXX.jpg."""
    rng = np.random.default_rng(seed)
    recs, poses = [], {}
    for e in range(n_episodes):
        d = root / "train" / f"ep{e:03d}"
        d.mkdir(parents=True, exist_ok=True)
        n = 10 + e % 5
        for k in range(n):
            img = np.full((size, size, 3), (e * 37 + k * 11) % 255, np.uint8)
            img[: size // 2] = rng.integers(0, 255, (size // 2, size, 3), dtype=np.uint8)
            cv2.imwrite(str(d / f"frame_{k:03d}.jpg"), img)
        for t in (4, n - 1):
            vid = f"ep{e:03d}-{t}"
            recs.append({"video_id": vid, "frames": [f"ep{e:03d}/frame_{k:03d}.jpg" for k in range(t + 1)], "q": "walk", "a": "stop"})
            poses[vid] = [[0.25 * k, 0.1 * e, 0.05 * k] for k in range(t + 1)]
    (root / "annotations_train.json").write_text(json.dumps(recs))
    (root / "poses_train.json").write_text(json.dumps(poses))
    return root


def write_project(dirpath: Path, data_root: Path, model: Path, cache_root: str = "cache", part_size: int = 4, backend: str = "zarr", **stage_overrides) -> Path:
    cfg = {
        "cache_root": cache_root,
        "backend": backend,
        "datasets": {"nav": {"source": "navila", "root": str(data_root), "splits": ["train"], "stages": ["poses", "frame-features"], "part_size": part_size}},
        "stages": {"frame-features": {"encoder": {"model": str(model)}, "batch_size": 16, **stage_overrides}},
    }
    path = dirpath / "navcache.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, str(REPO / "cli.py"), *args], cwd=cwd, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"navcache {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def cache_checksums(cache: Path) -> dict:
    """{part: {array: sha256}} plus the index rows: what 'identical result' means."""
    import polars as pl

    from navcache.cache_specs.layout import PARTS, read_json

    out = {}
    for p in sorted((cache / PARTS).iterdir()):
        meta = read_json(p / "part.json")
        out[p.name] = {k: v["sha256"] for k, v in meta["arrays"].items()}
    out["index"] = pl.read_parquet(cache / "index.parquet").rows()
    return out


def assert_colours(pixels, frame_numbers, colour, tol: float) -> None:
    """Each decoded frame's mean RGB is ``colour(i)`` of its source frame number, within ``tol``."""
    import numpy as np

    assert len(pixels) == len(frame_numbers)
    for row, i in zip(pixels, frame_numbers):
        mean = row.reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - np.array(colour(i))).max() < tol, (i, mean, colour(i))


def demo_job(tmp_path_factory, demo_world: Path, name: str, say=None):
    """(cwd, project): a fresh working folder holding a copy of the session's demo world, as
    "generated on first use" leaves it, and the embedded demo project resolved there."""
    import shutil

    from navcache.pipeline.project import resolve_project

    cwd = tmp_path_factory.mktemp(name)
    shutil.copytree(demo_world, cwd / "navcache_demo")
    return cwd, resolve_project(cwd=cwd, say=say or (lambda m: None))


def pixel_free_poses_caches(cwd: Path, scale: float, part_size: int = 256) -> Path:
    """The demo's NaVILA records at ``scale`` without pixels (``generate_demo(pixels=False)``) and
    their train/val ``poses`` caches under ``cwd/cache``; returns the cache root."""
    from navcache.pipeline.config import config_from_dict
    from navcache.pipeline.demo import generate_demo
    from navcache.pipeline.runner import ExtractOptions, extract

    info = generate_demo(cwd / "demo", scale=scale, pixels=False, workers=1)
    project = config_from_dict({"cache_root": str(cwd / "cache"), "datasets": {"demo_navila": {
        "source": "navila", "root": str(info.navila_root), "splits": ["train", "val"], "stages": ["poses"],
        "options": {"num_frames": 8}, "part_size": part_size}}}, cwd)
    for split in ("train", "val"):
        summary = extract(project, ExtractOptions(split, datasets=("demo_navila",)))
        assert not summary.errors, summary.errors
    return Path(project.cache_root)



def torchrun_and_single(head: str, write_config, n_train: int, tmp: Path, world: int = 2, timeout: int = 600) -> dict:
    """``torchrun --nproc-per-node world cli.py train head`` and the one-process run it must equal:
    full-batch settings (``write_config(out, batch_size, path) -> path``; ``world`` ranks of
    ``n_train // world`` samples against one of ``n_train``). {"ddp", "single": CompletedProcess, "tmp"}."""
    import os

    import pytest
    import torch

    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available in this torch build")
    assert n_train % world == 0, n_train  # no sample dropped by the per-rank shard
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(REPO / "cli.py"), "train", head, "--config"]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
                          *cmd, str(write_config(tmp / "ddp", n_train // world, tmp / "ddp.yaml"))],
                         cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
    single = subprocess.run([sys.executable, *cmd, str(write_config(tmp / "single", n_train, tmp / "single.yaml"))],
                            cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
    return {"ddp": ddp, "single": single, "tmp": tmp}
