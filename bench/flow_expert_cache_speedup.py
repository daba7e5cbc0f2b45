"""flow-expert: training samples/s from caches vs running the frozen perception per sample, per step, side by side.

Raw mode, batched as a fair raw trainer would: for each of the batch's frames, decode the frame
from the LeRobot demo's AV1 video (the source's ``read_frames``: the episode's segment, served by
timestamp), preprocess the whole batch in one call and run the tiny random-init DINOv3 over it in
ONE batched forward, pool its patch tokens to the cache's G x G grid, then the same training step
(flow-matching loss, backward, AdamW step of the connector + expert). A warm-up batch runs first on
each side, then the sides alternate (``cached-steps / raw-batches`` cached steps, one raw batch). Cached mode: the same step on batches from the trainer's own input path
(``heads.task.train_source``: ``TensorBatches`` over the frame_features + robot_meta caches, loaded
once, shuffled per epoch, gathered per batch). Each side's time is split into its parts (raw:
decode / preprocess + encoder forward + pool / training step; cached: batch gather / training
step) so the record says what dominates. Same model, batch size, optimiser, data and torch thread count (``--threads``, default 1:
on a shared, loaded machine two intra-op threads spin against other processes and make a tiny
step ~50x slower on both sides).

    python -m bench.flow_expert_cache_speedup [--raw-batches 8] [--cached-steps 200] [--batch-size 32] [--allow-load]
"""
from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import OUT, check_load, demo_project, record, training_step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw-batches", type=int, default=8)
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
    from navcache.heads.task import train_source
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

    step = training_step(task, model, opt)

    model.train()
    source = train_source(task, cfg.loop, 0, 1)

    def batches():  # the loop's epochs over the cache, as run_loop reads them
        for epoch in itertools.count():
            source.set_epoch(epoch)
            yield from source

    it = batches()
    cached_t = {"gather": 0.0, "step": 0.0}
    cached_n = [0]

    def cached_step() -> None:
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        step(batch)
        cached_n[0] += len(batch["state"])  # an epoch's last batch is shorter
        cached_t["gather"] += t1 - t0
        cached_t["step"] += time.perf_counter() - t1

    sp = next(s for s in plan_split(project, "demo_lerobot", "train") if s.stage.name == "frame-features")
    stage = sp.stage
    stage.setup()
    episodes = {e.episode_id: e for p in sp.parts for e in p.episodes}

    parts = {"decode": 0.0, "encode": 0.0, "step": 0.0}

    def raw_step(idx) -> None:
        t0 = time.perf_counter()
        frames = [stage.source.read_frames(episodes[sinfo["ids"][i]], [sinfo["frame_index"][i]]).pixels for i in idx.tolist()]
        t1 = time.perf_counter()
        x = stage.encoder.preprocess(np.concatenate(frames))  # [B, 3, 224, 224]
        cls, patches = stage.encoder.encode(x)  # one batched forward of the frozen encoder
        pooled = F.adaptive_avg_pool2d(patches.permute(0, 3, 1, 2).float(), stage.settings.pool_grid).flatten(2).transpose(1, 2)
        batch = {k: v[idx] for k, v in arrays.items()}
        batch["context"] = torch.cat([cls[:, None].float(), pooled], dim=1)  # [B, 1 + G*G, D], as cached
        t2 = time.perf_counter()
        step(batch)
        for k, dt in (("decode", t1 - t0), ("encode", t2 - t1), ("step", time.perf_counter() - t2)):
            parts[k] += dt

    cached_step()  # warm-ups
    raw_step(torch.randperm(n, generator=g)[:bs])
    parts, cached_t, cached_n = dict.fromkeys(parts, 0.0), dict.fromkeys(cached_t, 0.0), [0]
    # interleaved rounds: a machine shared with other jobs slows both sides alike, not one side's block
    per_round = max(1, a.cached_steps // a.raw_batches)
    for _ in range(a.raw_batches):
        for _ in range(per_round):
            cached_step()
        raw_step(torch.randperm(n, generator=g)[:bs])
    steps = per_round * a.raw_batches
    cached = cached_n[0] / sum(cached_t.values())
    cached_ms = {k: round(1e3 * v / steps, 3) for k, v in cached_t.items()}
    raw = a.raw_batches * bs / sum(parts.values())
    raw_ms = {k: round(1e3 * v / a.raw_batches, 1) for k, v in parts.items()}
    record("flow_expert_cache_speedup", {
        "per_training_step": {"cached_samples_per_s": round(cached, 1), "raw_samples_per_s": round(raw, 1),
                              "speedup": round(cached / raw, 1), "batch_size": bs, "context_tokens": info["context_tokens"],
                              "raw": "per sample: decode its frame from the AV1 video; batched: one encoder forward per step; after a warm-up",
                              "raw_ms_per_batch": raw_ms, "cached_ms_per_batch": cached_ms},
        "train_frames": n, "torch_threads": a.threads, "load_before": load_before, "load_after": check_load(a.allow_load),
    })


if __name__ == "__main__":
    main()
