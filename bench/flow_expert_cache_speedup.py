"""flow-expert: training samples/s from caches vs running the frozen perception per sample, per step, side by side.

Raw mode, batched as a fair raw trainer would: for each of the batch's frames, decode the frame
from the LeRobot demo's AV1 video (the source's ``read_frames``: the episode's segment, served by
timestamp), preprocess the whole batch in one call and run the tiny random-init DINOv3 over it in
ONE batched forward, pool its patch tokens to the cache's G x G grid, then the same training step
(flow-matching loss, backward, AdamW step of the connector + expert). A warm-up batch runs first on
each side. Cached mode: the same step on context tokens read from the frame_features cache (loaded
once). Same model, batch size, optimiser, data and torch thread count (``--threads``, default 1:
on a shared, loaded machine two intra-op threads spin against other processes and make a tiny
step ~50x slower on both sides).

    python -m bench.flow_expert_cache_speedup [--raw-batches 4] [--cached-steps 200] [--batch-size 32] [--allow-load]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import OUT, check_load, demo_project, record


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw-batches", type=int, default=4)
    ap.add_argument("--cached-steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both sides (1: no spin-waiting on a shared machine)")
    ap.add_argument("--allow-load", action="store_true")
    a = ap.parse_args()
    load_before = check_load(a.allow_load)
    torch.set_num_threads(a.threads)

    from navcache.heads.flow_expert import load_config
    from navcache.heads.flow_expert.data import load_split
    from navcache.heads.flow_expert.train import build_task
    from navcache.pipeline.config import load_config as load_project
    from navcache.pipeline.plan import plan_split
    from navcache.pipeline.runner import ExtractOptions, extract

    project = load_project(demo_project("flow_speed", 1.0, "tiny", datasets=("demo_lerobot",), stages=("frame-features", "robot-meta")))
    for split in ("train", "val"):
        assert not extract(project, ExtractOptions(split)).errors
    cfg = load_config(None, cache_root=str(project.cache_root), out_dir=str(OUT / "flow_speed/run"))
    task, info = build_task(cfg)
    arrays = task.train_arrays
    _, sinfo = load_split(cfg, "train", info["norm_stats"])
    model = task.model
    groups = task.param_groups(model)
    opt = torch.optim.AdamW(groups)
    n, bs = len(arrays["state"]), a.batch_size
    g = torch.Generator().manual_seed(0)

    def step(batch) -> None:
        loss, _ = task.loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    step({k: v[torch.randperm(n, generator=g)[:bs]] for k, v in arrays.items()})  # warm-up
    t0 = time.perf_counter()
    for _ in range(a.cached_steps):
        idx = torch.randperm(n, generator=g)[:bs]
        step({k: v[idx] for k, v in arrays.items()})
    cached = a.cached_steps * bs / (time.perf_counter() - t0)

    sp = next(s for s in plan_split(project, "demo_lerobot", "train") if s.stage.name == "frame-features")
    stage = sp.stage
    stage.setup()
    episodes = {e.episode_id: e for p in sp.parts for e in p.episodes}

    def raw_step(idx) -> None:
        frames = [stage.source.read_frames(episodes[sinfo["ids"][i]], [sinfo["frame_index"][i]]).pixels for i in idx.tolist()]
        x = stage.encoder.preprocess(np.concatenate(frames))  # [B, 3, 224, 224]
        cls, patches = stage.encoder.encode(x)  # one batched forward of the frozen encoder
        pooled = F.adaptive_avg_pool2d(patches.permute(0, 3, 1, 2).float(), stage.settings.pool_grid).flatten(2).transpose(1, 2)
        batch = {k: v[idx] for k, v in arrays.items()}
        batch["context"] = torch.cat([cls[:, None].float(), pooled], dim=1)  # [B, 1 + G*G, D], as cached
        step(batch)

    raw_step(torch.randperm(n, generator=g)[:bs])  # warm-up
    t0 = time.perf_counter()
    for _ in range(a.raw_batches):
        raw_step(torch.randperm(n, generator=g)[:bs])
    raw = a.raw_batches * bs / (time.perf_counter() - t0)
    record("flow_expert_cache_speedup", {
        "per_training_step": {"cached_samples_per_s": round(cached, 1), "raw_samples_per_s": round(raw, 1),
                              "speedup": round(cached / raw, 1), "batch_size": bs, "context_tokens": info["context_tokens"],
                              "raw": "per sample: decode its frame from the AV1 video; batched: one encoder forward per step; after a warm-up"},
        "train_frames": n, "torch_threads": a.threads, "load_before": load_before, "load_after": check_load(a.allow_load),
    })


if __name__ == "__main__":
    main()
