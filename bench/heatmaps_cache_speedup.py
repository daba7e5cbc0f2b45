"""heatmaps head: training samples/s from caches vs recomputing VGGT + DINOv3 per sample, per step.

Per training step (one optimiser step over ``--batch-size`` keyframe pairs of the demo glances):

- cached: ``HeatmapsTask.loss`` on pairs whose VGGT tokens and DINOv3 patch tokens are rows of
  the tables loaded once from the caches (what ``navcache train heatmaps`` does);
- raw, batched as a fair raw trainer would: for each distinct episode of the batch, decode its 16
  frames once and run ONLY the VGGT aggregator over them (the tokens of a keyframe depend on every
  frame of its episode, since VGGT mixes frames globally; the camera, depth and point heads are
  skipped), then ONE batched DINOv3 forward over every distinct keyframe of the batch (pixels
  reused from that decode), then the same training step. A warm-up batch runs first (lazy
  imports, the allocator, the page cache). The targets and camera cues are read from the caches
  on both sides (labels, not features), which only flatters the raw side.

Same model (the demo preset as ``navcache train heatmaps`` trains it, with its frozen tiny
Qwen2), batch, optimiser and data: the tiny random-init VGGT stand-in at 518 x 518 and the tiny
random-init DINOv3 of the demo. The two sides alternate in ``--rounds`` rounds (so a change in
the machine's load hits both); the speed-up is the median of the per-round ratios.

    python -m bench.heatmaps_cache_speedup [--rounds 3] [--raw-batches 2] [--cached-steps 40] [--allow-load]
"""
from __future__ import annotations

import argparse
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import OUT, check_load, record


def project_file():
    """The demo project limited to the heatmaps chain, its world under bench/out."""
    import yaml

    from navcache.pipeline.demo import generate_demo
    from navcache.pipeline.encoders.tiny import make_random_dinov3
    from navcache.pipeline.project import DEMO_ENCODER, DEMO_VGGT, demo_config_dict
    from navcache.pipeline.demo.vggt_standin import make_standin

    demo, root = OUT / "demo_scale1", OUT / "heatmaps_speed"
    generate_demo(demo, scale=1.0)
    make_random_dinov3(demo / DEMO_ENCODER, size="tiny", seed=0)
    make_standin(demo / DEMO_VGGT, seed=0)
    cfg = demo_config_dict(demo, root / "cache")
    cfg["datasets"] = {k: v for k, v in cfg["datasets"].items() if k in ("demo_heatmaps", "demo_heatmaps_vggt")}
    root.mkdir(parents=True, exist_ok=True)
    (root / "navcache.yaml").write_text(yaml.safe_dump(cfg))
    return root / "navcache.yaml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--raw-batches", type=int, default=2, help="raw batches per round")
    ap.add_argument("--cached-steps", type=int, default=40, help="cached steps per round")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--allow-load", action="store_true")
    a = ap.parse_args()
    load_before = check_load(a.allow_load)

    from navcache.heads.heatmaps import load_config
    from navcache.heads.heatmaps.data import load_split
    from navcache.heads.heatmaps.train import build_task
    from navcache.pipeline.config import load_config as load_project
    from navcache.pipeline.runner import ExtractOptions, extract

    project = load_project(project_file())
    shutil.rmtree(project.cache_root, ignore_errors=True)
    t0 = time.perf_counter()
    for split in ("train", "val"):
        assert not extract(project, ExtractOptions(split)).errors
    t_extract = time.perf_counter() - t0
    cfg = load_config(None, "demo", cache_root=str(project.cache_root), out_dir=str(OUT / "heatmaps_speed/run"))
    task, _ = build_task(cfg)
    model, arrays = task.model, task.train_arrays
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    n, bs = len(arrays["a"]), a.batch_size
    g = torch.Generator().manual_seed(0)

    def step(loss) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def cached_step(idx) -> None:
        step(task.loss(model, {k: v[idx] for k, v in arrays.items()})[0])

    _, info = load_split(cfg.cache_root, cfg.dataset, "train", cfg.tokens_dataset)
    raw = RawPairs(project, info)
    episode_of_row = np.concatenate([np.full(len(e["frames"]), j) for j, e in enumerate(info["per_episode"])])

    def raw_step(idx) -> None:
        batch = {k: v[idx] for k, v in arrays.items()}
        vggt, dino = raw.features(batch["a"].numpy(), batch["b"].numpy(), episode_of_row)
        out = model.from_tokens(vggt[0], dino[0], vggt[1], dino[1], batch["pose"])
        losses = task._losses(out, batch["target"].float())
        step(losses["ce"].mean() + cfg.upsample_loss_weight * losses["ce_up"].mean())

    def rate(fn, steps: int) -> float:  # samples/s over ``steps`` random batches
        t0 = time.perf_counter()
        for _ in range(steps):
            fn(torch.randperm(n, generator=g)[:bs])
        return steps * bs / (time.perf_counter() - t0)

    model.train()
    rate(cached_step, 1), rate(raw_step, 1)  # warm-up both sides
    rounds = [(rate(cached_step, a.cached_steps), rate(raw_step, a.raw_batches)) for _ in range(a.rounds)]
    cached, raw_rate = (float(np.median([r[i] for r in rounds])) for i in (0, 1))
    speedup = float(np.median([c / r for c, r in rounds]))
    record("heatmaps_cache_speedup", {
        "per_training_step": {"cached_samples_per_s": round(cached, 1), "raw_samples_per_s": round(raw_rate, 2),
                              "speedup": round(speedup, 1), "target": ">= 50x", "met": speedup >= 50,
                              "rounds": [[round(c, 1), round(r, 2), round(c / r, 1)] for c, r in rounds],
                              "llm": task.model.llm is not None, "batch_size": bs, "train_pairs": n,
                              "raw": "per distinct episode one decode + one VGGT aggregator pass; one batched DINOv3 forward; after a warm-up"},
        "extract_train_and_val_s": round(t_extract, 1),
        "load_before": load_before, "load_after": check_load(a.allow_load),
    })


class RawPairs:
    """Recomputes a batch's VGGT tokens and DINOv3 patch tokens from the videos."""

    def __init__(self, project, info: dict):
        from navcache.pipeline.plan import plan_split

        self.vggt_stage = plan_split(project, "demo_heatmaps_vggt", "train")[0].stage
        self.dino_stage = next(p.stage for p in plan_split(project, "demo_heatmaps", "train") if p.stage.name == "frame-features")
        self.vggt_stage.setup()
        self.dino_stage.setup()
        self.episodes = {e.episode_id: e for e in self.vggt_stage.source.episodes("train")}
        self.info = info

    def _episode(self, j: int) -> tuple[torch.Tensor, np.ndarray]:
        """(VGGT tokens of the episode's keyframes [K, Th, Tw, Dv], their pixels [K, H, W, 3])."""
        from navcache.pipeline.encoders.vggt import preprocess_crop

        ep = self.info["per_episode"][j]
        frames = self.vggt_stage.source.read_frames(self.episodes[ep["id"]])
        images = preprocess_crop(frames.pixels)  # [S, 3, 518, 518]
        adapter = self.vggt_stage.adapter
        with torch.inference_mode():
            tokens_list, start = adapter._model.aggregator(images[None])
            last = tokens_list[-1][0, :, start:]
            hw = int(round(last.shape[1] ** 0.5))
            grid = last.reshape(len(images), hw, hw, -1).permute(0, 3, 1, 2)
            pool = adapter.s.token_pool
            tokens = F.avg_pool2d(grid, pool, pool).permute(0, 2, 3, 1)
        rows = [list(frames.indices).index(f) for f in ep["frames"]]
        return tokens[rows].float(), frames.pixels[rows]

    def features(self, a: np.ndarray, b: np.ndarray, episode_of_row: np.ndarray):
        """([vggt_a, vggt_b], [dino_a, dino_b]) for keyframe-table rows a, b [B]."""
        base = np.cumsum([0] + [len(e["frames"]) for e in self.info["per_episode"]])
        needed = sorted(set(episode_of_row[a]) | set(episode_of_row[b]))
        vggt, pixels = {}, {}
        for j in needed:
            tok, pix = self._episode(int(j))
            for k in range(len(tok)):
                vggt[base[j] + k], pixels[base[j] + k] = tok[k], pix[k]
        rows = sorted(pixels)
        x = self.dino_stage.encoder.preprocess(np.stack([pixels[r] for r in rows]))
        _, patches = self.dino_stage.encoder.encode(x)  # one batched forward over every keyframe needed
        dino = dict(zip(rows, patches.float()))
        return ([torch.stack([vggt[int(r)] for r in rows_]) for rows_ in (a, b)],
                [torch.stack([dino[int(r)] for r in rows_]) for rows_ in (a, b)])


if __name__ == "__main__":
    main()
