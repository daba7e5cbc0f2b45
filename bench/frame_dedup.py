"""Frames encoded once: how redundant NaVILA sample rows are, and what deduplicating saves.

1. Demo world (demo_navila, train): frame-features built twice side by side, encoding every row
   (``dedup_frames: false``, the old path) and each distinct frame once; prints rows, frames the
   encoder saw in each run, wall time of each build, and checks every sample's arrays are equal.
2. R2R-shaped synthetic annotations (``--episodes`` 500 episodes of 40-120 steps, ``--samples``
   10,000 histories spread evenly over them; annotations only, no pixels): rows / distinct
   frames from the NaVILA listing (sampled files + one black padding frame), the encoder work
   that deduplication removes at that shape.
3. Video: the demo's rover clips read as frame-features and then geometry read them (the same
   sampled frames), with the run's decoded-frame memo (``decode.DecodedVideoFrames``) and without;
   decoder passes counted at PyAV's ``av.open``, pixels compared.

    python bench/frame_dedup.py [--allow-load]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

from bench.common import OUT, check_load, demo_project, record


def redundancy(root: Path, split: str = "train") -> dict:
    """Rows, distinct frames (sampled files + one black frame when any row pads) and their ratio."""
    from navcache.pipeline.sources import make_source

    eps = [e for e in make_source("navila", root, num_frames=8).episodes(split) if e.quarantine is None]
    rows = sum(len(e.record["sample_indices"]) for e in eps)
    distinct = len({f for e in eps for f in e.files}) + any(k < 0 for e in eps for k in e.record["sample_indices"])
    return {"samples": len(eps), "rows": rows, "distinct_frames": distinct, "ratio": round(rows / distinct, 2)}


def r2r_annotations(root: Path, episodes: int, samples: int, seed: int = 0) -> Path:
    """NaVILA-format annotations for R2R-like trajectories; frames are never read."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(40, 121, episodes)
    per = np.full(episodes, samples // episodes) + (np.arange(episodes) < samples % episodes)
    recs = []
    for e, (n, k) in enumerate(zip(lengths, per)):
        for t in np.unique(np.linspace(1, n, k).round().astype(int)):
            recs.append({"video_id": f"r2r{e:04d}_{t:03d}", "frames": [f"r2r{e:04d}/{i:03d}.jpg" for i in range(t)], "q": "go", "a": "stop"})
    root.mkdir(parents=True, exist_ok=True)
    (root / "annotations_train.json").write_text(json.dumps(recs))
    return root


def demo_side_by_side() -> dict:
    from navcache.cache_specs import open_cache
    from navcache.pipeline.config import load_config
    from navcache.pipeline.encoders.hf_vision import HFVisionEncoder
    from navcache.pipeline.runner import ExtractOptions, extract

    seen: list[int] = []
    real = HFVisionEncoder.encode_on_device
    HFVisionEncoder.encode_on_device = lambda self, x: seen.append(len(x)) or real(self, x)  # counts frames per forward
    out, caches = {}, {}
    try:
        for name, dedup in (("every_row", False), ("dedup", True)):
            cfg_path = demo_project(f"frame_dedup_{name}", 1.0, datasets=("demo_navila",), stages=("frame-features",))
            cfg = yaml.safe_load(cfg_path.read_text())
            cfg["stages"]["frame-features"]["dedup_frames"] = dedup
            cfg_path.write_text(yaml.safe_dump(cfg))
            root = Path(cfg["cache_root"])
            if root.exists():
                import shutil

                shutil.rmtree(root)
            seen.clear()
            t = time.perf_counter()
            s = extract(load_config(cfg_path), ExtractOptions("train"))
            assert not s.errors, s.errors
            out[name] = {"encoder_frames": sum(seen), "build_s": round(time.perf_counter() - t, 2)}
            caches[name] = open_cache(root / "demo_navila/train/frame_features")
            data_root = Path(cfg["datasets"]["demo_navila"]["root"])
    finally:
        HFVisionEncoder.encode_on_device = real
    a, b = caches["every_row"], caches["dedup"]
    assert a.episodes == b.episodes
    equal = all(np.array_equal(a[e][k], b[e][k]) for e in a.episodes for k in a[e])
    assert equal, "deduplicated arrays differ from the every-row build"
    return {**redundancy(data_root), **out, "arrays_equal": equal,
            "encoder_frames_ratio": round(out["every_row"]["encoder_frames"] / out["dedup"]["encoder_frames"], 2),
            "build_speedup": round(out["every_row"]["build_s"] / out["dedup"]["build_s"], 2)}


def _demo_root(dataset: str) -> Path:
    """The demo world's folder of ``dataset`` (the one ``demo_side_by_side`` generated)."""
    from navcache.pipeline.project import demo_config_dict

    return Path(demo_config_dict(OUT / "demo_scale1", OUT / "unused")["datasets"][dataset]["root"])


def video_two_stages(root: Path, split: str = "train") -> dict:
    """The demo's rover clips read as a run reads them for two frame stages (frame-features, then
    geometry: the same sampled frames of each clip), with the run's decoded-frame memo and without
    it (budget 0); decoding passes (one PyAV open + full strict pass each) counted by wrapping
    ``av.open``, wall time of each side, pixels compared."""
    import av

    from navcache.pipeline.sources import make_source

    opened: list[str] = []
    real = av.open
    av.open = lambda f, *a, **k: opened.append(str(f)) or real(f, *a, **k)
    out, pixels = {}, {}
    try:
        warm = make_source("rover", root)
        for e in warm.episodes(split):  # page cache and lazy imports, before either side is timed
            if e.quarantine is None:
                warm.read_frames(e)
        for _round in range(2):  # interleaved rounds, best of each side
            for name, budget in (("no_memo", 0), ("memo_256mb", 256 << 20)):
                src = make_source("rover", root)
                src.decoded.max_bytes = budget
                eps = [e for e in src.episodes(split) if e.quarantine is None]
                opened.clear()
                t = time.perf_counter()
                got = [src.read_frames(e).pixels for _stage in ("frame-features", "geometry") for e in eps]
                dt = round(time.perf_counter() - t, 2)
                out[name] = {"decoder_passes": len(opened), "seconds": min(dt, out.get(name, {}).get("seconds", dt))}
                pixels[name] = got
            requested = sum(len(g) for g in got)
            distinct = len({(str(e.files[0]), int(i)) for e in eps for i in src.read_frames(e).indices})
    finally:
        av.open = real
    equal = all(np.array_equal(a, b) for a, b in zip(pixels["no_memo"], pixels["memo_256mb"]))
    assert equal, "frames served from the memo differ from decoding again"
    return {"clips": len(eps), "frames_requested": requested, "distinct_frames": distinct, **out, "arrays_equal": equal,
            "speedup": round(out["no_memo"]["seconds"] / out["memo_256mb"]["seconds"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=500)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--allow-load", action="store_true", help="report even when the machine is loaded")
    a = ap.parse_args()
    before = check_load(a.allow_load)
    demo = demo_side_by_side()
    r2r = redundancy(r2r_annotations(OUT / f"r2r_shaped_{a.episodes}_{a.samples}", a.episodes, a.samples))
    video = video_two_stages(_demo_root("demo_rover"))
    after = check_load(a.allow_load)
    record("frame_dedup", {"demo_navila_train": demo, "r2r_shaped": {"episodes": a.episodes, **r2r}, "demo_rover_two_stages": video,
                           "machine_load_before": before, "machine_load_after": after})


if __name__ == "__main__":
    main()
