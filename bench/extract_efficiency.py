"""Extraction efficiency = end-to-end frames/s / bare-encoder frames/s, same batches, same run.

End to end: ``extract`` of the frame-features stage (decode, preprocess, encode, pool, write zarr,
commit) on the demo world. Bare: the same frames, decoded and preprocessed into memory beforehand,
pushed through the same encoder in the same batches. Target: >= 0.9 on CPU (ViT-S-size DINOv3,
random init); >= 0.95 with a ViT-L-size DINOv3 on a GPU.

    python bench/extract_efficiency.py [--size vits16] [--scale 1] [--rounds 2]
"""
from __future__ import annotations

import argparse
import platform
import shutil
import time

import torch

from bench.common import demo_project, record


def bare_encoder_fps(project) -> tuple[float, int]:
    from navcache.pipeline.plan import plan_split

    batches = []
    stage = None
    for ds in project.datasets:
        for sp in plan_split(project, ds, "train"):
            stage = sp.stage
            stage.setup()
            xs = [stage.prepare(ep, {}).payload[0] for p in sp.parts for ep in p.episodes if not ep.quarantine]
            batches.append(torch.cat(xs))
    bs = stage.settings.batch_size
    frames = sum(len(x) for x in batches)
    t0 = time.perf_counter()
    for x in batches:
        # same grouping as the executor: episodes of a dataset concatenated, cut into batch_size
        for i in range(0, len(x), bs):
            stage.encoder.encode(x[i : i + bs])
    return frames / (time.perf_counter() - t0), frames


def end_to_end_fps(project) -> tuple[float, int]:
    from navcache.pipeline.runner import ExtractOptions, extract

    shutil.rmtree(project.cache_root, ignore_errors=True)
    t0 = time.perf_counter()
    s = extract(project, ExtractOptions("train"))
    dt = time.perf_counter() - t0
    assert not s.errors, s.errors
    frames = sum(st.frames_built for st in s.stages)
    return frames / dt, frames


def main() -> None:
    from navcache.pipeline.config import load_config

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="vits16")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--datasets", default="demo_navila", help="comma-separated demo datasets")
    a = ap.parse_args()
    project = load_config(demo_project(f"eff_{a.size}", a.scale, a.size, datasets=tuple(a.datasets.split(",")), batch_size=a.batch_size))
    end_to_end_fps(project)  # warm-up: page cache, lazy imports, allocator
    rows = []
    for r in range(a.rounds):
        e2e, n1 = end_to_end_fps(project)
        bare, n2 = bare_encoder_fps(project)
        assert n1 == n2, (n1, n2)
        rows.append({"round": r, "end_to_end_fps": round(e2e, 2), "bare_fps": round(bare, 2), "ratio": round(e2e / bare, 3)})
        print(rows[-1], flush=True)
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    record(f"extract_efficiency_{a.size}", {"device": dev, "encoder": a.size, "datasets": a.datasets, "frames": n1, "rounds": rows, "ratio_median": sorted(r["ratio"] for r in rows)[len(rows) // 2]})


if __name__ == "__main__":
    main()
