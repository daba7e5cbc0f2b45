"""SIM heads: training from caches vs the seed's raw-frames mode, samples/s side by side.

Raw mode (what the SIM v0 seed does without cached features): for every sample decode the clip's
8 frames (decord) and run the frozen image encoder, then the same training step. Cached mode:
the same step on vis_feats read from the frame_features cache (loaded once). Same model, batch
size, optimiser and demo data (tiny random-init DINOv3, 128x128 clips resized to 224).

    python -m bench.sim_cache_speedup [--raw-batches 4] [--cached-steps 200]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from bench.common import OUT, demo_project, record


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw-batches", type=int, default=4)
    ap.add_argument("--cached-steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args()

    from navcache.heads.sim_heads import load_config
    from navcache.heads.sim_heads.train import build_task
    from navcache.pipeline.config import load_config as load_project
    from navcache.pipeline.plan import plan_split
    from navcache.pipeline.runner import ExtractOptions, extract

    project = load_project(demo_project("sim_speed", 1.0, "tiny", datasets=("demo_rover",), stages=("frame-features", "rover-meta")))
    for split in ("train", "val"):
        assert not extract(project, ExtractOptions(split)).errors
    cfg = load_config(None, cache_root=str(project.cache_root), out_dir=str(OUT / "sim_speed/run"))
    task, _ = build_task(cfg)
    model, arrays = task.model, task.train_arrays
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    n, bs = len(arrays["risk"]), a.batch_size
    g = torch.Generator().manual_seed(0)

    def step(batch) -> None:
        loss, _ = task.loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    t0 = time.perf_counter()
    for _ in range(a.cached_steps):
        idx = torch.randperm(n, generator=g)[:bs]
        step({k: v[idx] for k, v in arrays.items()})
    cached = a.cached_steps * bs / (time.perf_counter() - t0)

    sp = plan_split(project, "demo_rover", "train")[0]
    stage = sp.stage
    stage.setup()
    episodes = {e.episode_id: e for p in sp.parts for e in p.episodes}
    ids = [e for e in task_ids(project)]
    t0 = time.perf_counter()
    for _ in range(a.raw_batches):
        idx = torch.randperm(n, generator=g)[:bs]
        vis = []
        for i in idx.tolist():
            frames = stage.source.read_frames(episodes[ids[i]])  # decode 8 frames
            cls, patches = stage.encoder.encode(stage.encoder.preprocess(frames.pixels))  # frozen encoder
            pooled = F.adaptive_avg_pool2d(patches.permute(0, 3, 1, 2), stage.settings.pool_grid).mean(dim=(2, 3))
            vis.append(torch.cat([cls, pooled], dim=-1))
        batch = {k: v[idx] for k, v in arrays.items()}
        batch["vis_feats"] = torch.stack(vis)
        step(batch)
    raw = a.raw_batches * bs / (time.perf_counter() - t0)
    record("sim_cache_speedup", {"cached_samples_per_s": round(cached, 1), "raw_samples_per_s": round(raw, 1), "speedup": round(cached / raw, 1), "batch_size": bs})


def task_ids(project) -> list[str]:
    from navcache.cache_specs import open_cache

    return list(open_cache(project.cache_root, "demo_rover", "train", "frame_features").episodes)


if __name__ == "__main__":
    main()
