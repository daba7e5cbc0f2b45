"""SIM heads: training from caches vs the seed's raw-frames mode, per training step and over a full run.

Per training step (samples/s of one optimiser step, batch 32): raw mode does what the SIM v0 seed
does without cached features, batched as a fair raw trainer would: decode the 32 clips' 8 frames
each, preprocess all 256 frames in one call and run the frozen image encoder over them in ONE
batched forward, then the same training step; a warm-up batch runs first (lazy imports, the
allocator, the page cache). Cached mode: the same step on ``vis_feats`` read from the
frame_features cache (loaded once). Same model, batch size, optimiser and demo data (tiny
random-init DINOv3, 128x128 clips resized to 224).

Full run (the figure a user sees): cached = extraction from an empty cache (frame-features and
rover-meta, train and val) + loading the caches + the SIM default's epochs of steps, all timed
here; raw = the same number of steps at the raw per-step rate measured above (extrapolated: a
full raw run takes tens of minutes).

    python -m bench.sim_cache_speedup [--raw-batches 4] [--cached-steps 200] [--allow-load]
"""
from __future__ import annotations

import argparse
import math
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import OUT, check_load, demo_project, record, training_step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw-batches", type=int, default=4)
    ap.add_argument("--cached-steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--allow-load", action="store_true")
    a = ap.parse_args()
    load_before = check_load(a.allow_load)

    from navcache.heads.sim_heads import load_config
    from navcache.heads.sim_heads.train import build_task
    from navcache.pipeline.config import load_config as load_project
    from navcache.pipeline.plan import plan_split
    from navcache.pipeline.runner import ExtractOptions, extract

    project = load_project(demo_project("sim_speed", 1.0, "tiny", datasets=("demo_rover",), stages=("frame-features", "rover-meta")))
    shutil.rmtree(project.cache_root, ignore_errors=True)
    t0 = time.perf_counter()
    for split in ("train", "val"):
        assert not extract(project, ExtractOptions(split)).errors
    t_extract = time.perf_counter() - t0
    cfg = load_config(None, cache_root=str(project.cache_root), out_dir=str(OUT / "sim_speed/run"))
    t0 = time.perf_counter()
    task, _ = build_task(cfg)
    t_load = time.perf_counter() - t0
    model, arrays = task.model, task.train_arrays
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    n, bs = len(arrays["risk"]), a.batch_size
    g = torch.Generator().manual_seed(0)

    step = training_step(task, model, opt)

    model.train()
    step({k: v[torch.randperm(n, generator=g)[:bs]] for k, v in arrays.items()})  # warm-up
    t0 = time.perf_counter()
    for _ in range(a.cached_steps):
        idx = torch.randperm(n, generator=g)[:bs]
        step({k: v[idx] for k, v in arrays.items()})
    cached = a.cached_steps * bs / (time.perf_counter() - t0)

    sp = plan_split(project, "demo_rover", "train")[0]
    stage = sp.stage
    stage.setup()
    episodes = {e.episode_id: e for p in sp.parts for e in p.episodes}
    ids = task_ids(project)

    def raw_step(idx) -> None:
        frames = [stage.source.read_frames(episodes[ids[i]]).pixels for i in idx.tolist()]  # decode 8 frames each
        x = stage.encoder.preprocess(np.concatenate(frames))  # [B*8, 3, 224, 224]
        cls, patches = stage.encoder.encode(x)  # one batched forward of the frozen encoder
        pooled = F.adaptive_avg_pool2d(patches.permute(0, 3, 1, 2), stage.settings.pool_grid).mean(dim=(2, 3))
        vis = torch.cat([cls, pooled], dim=-1).reshape(len(idx), -1, cls.shape[-1] * 2)
        batch = {k: v[idx] for k, v in arrays.items()}
        batch["vis_feats"] = vis
        step(batch)

    raw_step(torch.randperm(n, generator=g)[:bs])  # warm-up
    t0 = time.perf_counter()
    for _ in range(a.raw_batches):
        raw_step(torch.randperm(n, generator=g)[:bs])
    raw = a.raw_batches * bs / (time.perf_counter() - t0)

    epochs = cfg.loop.epochs
    steps = epochs * math.ceil(n / bs)
    t0 = time.perf_counter()  # the full cached run's steps, measured (not extrapolated)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            step({k: v[idx] for k, v in arrays.items()})
    t_cached_steps = time.perf_counter() - t0
    cached_run = t_extract + t_load + t_cached_steps
    raw_run = sum(min(bs, n - i) for i in range(0, n, bs)) * epochs / raw  # samples of the run at the raw rate
    record("sim_cache_speedup", {
        "per_training_step": {"cached_samples_per_s": round(cached, 1), "raw_samples_per_s": round(raw, 1),
                              "speedup": round(cached / raw, 1), "batch_size": bs, "raw": "batched: one encoder forward per step, after a warm-up"},
        "full_run": {"epochs": epochs, "steps": steps, "train_samples": n,
                     "cached_s": {"extract_train_and_val": round(t_extract, 2), "load_caches": round(t_load, 2),
                                  "training_steps": round(t_cached_steps, 2), "total": round(cached_run, 2)},
                     "raw_s_extrapolated": round(raw_run, 1), "speedup_including_extraction": round(raw_run / cached_run, 1)},
        "load_before": load_before, "load_after": check_load(a.allow_load),
    })


def task_ids(project) -> list[str]:
    from navcache.cache_specs import open_cache

    return list(open_cache(project.cache_root, "demo_rover", "train", "frame_features").episodes)


if __name__ == "__main__":
    main()
