"""Extraction efficiency of the fused Prismatic (OpenVLA) tower: end-to-end / bare encoders.

End-to-end: ``extract`` of the frame-features stage with ``tower: prismatic`` (listing, hashing,
JPEG decode, OpenVLA's resize-naive preprocessing for both towers, batching, both towers'
forward to the second-to-last block, concatenation, pooling, zarr write, commit) over a
videos-source dataset of 640x480 JPEG frame folders (8 distinct frames an episode).
Baseline, in the same run: the two bare towers (``PrismaticEncoder.encode``: DINOv2-reg forward
+ SigLIP forward + concatenation, nothing else) over the same frames, decoded and preprocessed
beforehand, in the same batches. Ratio = bare seconds / end-to-end seconds (target >= 0.9 on CPU).

Towers: seeded random-init ``Dinov2WithRegistersModel`` (ViT-L/14, 4 registers) and
``SiglipVisionModel`` (so400m/14) at the real widths; ``--depth`` blocks each (default 24 and 27,
the real depths; fewer blocks make the towers cheaper and so the ratio harder to reach).

    python -m bench.fused_tower_efficiency [--episodes 4] [--depth 24,27] [--batch-size 8] [--allow-load]
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import yaml

from bench.common import OUT, check_load, record

T = 8


def make_data(root: Path, episodes: int) -> Path:
    import cv2

    if (root / "done").exists() and len(list((root / "train").iterdir())) == episodes:
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    for e in range(episodes):
        d = root / "train" / f"ep{e:03d}"
        d.mkdir(parents=True)
        for k in range(T):
            img = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (7, 7), 0)
            cv2.imwrite(str(d / f"{k:04d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    (root / "done").touch()
    return root


def make_towers(depths: tuple[int, int]) -> tuple[Path, Path]:
    from navcache.pipeline.encoders.tiny import make_random_tower

    base = OUT / "models"
    dino = make_random_tower(base / f"dinov2-reg-L-d{depths[0]}", "dinov2-reg", seed=0, hidden_size=1024, layers=depths[0],
                             num_attention_heads=16, intermediate_size=4096)
    siglip = make_random_tower(base / f"siglip-so400m-d{depths[1]}", "siglip", seed=1, hidden_size=1152, layers=depths[1],
                               num_attention_heads=16, intermediate_size=4304)
    return dino, siglip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--depth", default="24,27")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--allow-load", action="store_true")
    a = ap.parse_args()
    import torch

    from navcache.pipeline.config import load_config
    from navcache.pipeline.encoders.prismatic import PrismaticEncoder, PrismaticSettings
    from navcache.pipeline.runner import ExtractOptions, extract
    from navcache.pipeline.sources import make_source

    depths = tuple(int(x) for x in a.depth.split(","))
    root = make_data(OUT / "fused_data", a.episodes)
    dino, siglip = make_towers(depths)
    fused = {"dino": str(dino), "siglip": str(siglip), "device": "cpu", "precision": "fp32"}
    cfg = {"cache_root": str(OUT / "fused_cache"), "backend": "zarr",
           "datasets": {"fused": {"source": "videos", "root": str(root), "splits": ["train"], "stages": ["frame-features"],
                                  "options": {"num_frames": T}, "part_size": 16}},
           "stages": {"frame-features": {"tower": "prismatic", "prismatic": fused, "batch_size": a.batch_size}}}
    path = OUT / "fused_project" / "navcache.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    project = load_config(path)

    # the same frames, decoded and preprocessed outside the timing, in the stage's batches
    enc = PrismaticEncoder(PrismaticSettings(**fused))
    src = make_source("videos", root, num_frames=T)
    x = torch.cat([enc.preprocess(src.read_frames(ep, resize_to=(224, 224)).pixels) for ep in src.episodes("train")])
    enc.encode(x[:2])  # load + warm-up

    before = check_load(a.allow_load)
    t0 = time.perf_counter()
    for i in range(0, len(x), a.batch_size):
        enc.encode(x[i : i + a.batch_size])
    bare = time.perf_counter() - t0

    shutil.rmtree(project.cache_root, ignore_errors=True)
    t0 = time.perf_counter()
    s = extract(project, ExtractOptions("train"))
    e2e = time.perf_counter() - t0
    assert not s.errors, s.errors
    frames = sum(st.frames_built for st in s.stages)
    after = check_load(a.allow_load)
    assert frames == len(x), (frames, len(x))
    ratio = bare / e2e
    print(f"fused tower (depths {depths}): {frames} frames; bare encoders {frames / bare:.2f} frames/s, "
          f"end-to-end {frames / e2e:.2f} frames/s; efficiency {ratio:.3f} (target >= 0.9)")
    record("fused_tower_efficiency", {"frames": frames, "depths": depths, "batch_size": a.batch_size, "bare_s": bare, "end_to_end_s": e2e,
                                      "ratio": ratio, "load_before": before, "load_after": after,
                                      "torch_threads": torch.get_num_threads()})
    if ratio < 0.9:
        raise SystemExit(f"efficiency {ratio:.3f} < 0.9")


if __name__ == "__main__":
    main()
