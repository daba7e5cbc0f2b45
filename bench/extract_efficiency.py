"""Extraction efficiency on real-sized frames: end-to-end frames/s / a stand-in GPU's frames/s.

The stand-in encoder holds "the device" for a calibrated time per batch without using the CPU
(``time.sleep``, which releases the GIL): a fast GPU, as the CPU sees one. Everything else is the
real pipeline: ``extract`` of the frame-features stage (listing, file hashing, decode, the
encoder's own preprocessing, batching, pooling, zarr write, atomic commit) over a videos-source
dataset of 512x512 JPEG frame folders (8 frames an episode) and one of 640x480 H.264 mp4s (48
frames, 8 sampled), each episode present ``RUN_COPIES`` times (``--copies``). Baseline: the stand-in alone over the same number of frames in the same
batches, in the same run.

Calibration: the bench first measures, on one thread, what the CPU spends per frame to decode and
preprocess these files (``--preprocess``: exact or fast), i.e. the feed rate per core; the
stand-in then runs at ``--load`` x (cores) x that rate ("decode" calibration). That counts only
decoding: the rest of the pipeline (hashing, batching, pooling, writing) costs CPU too, so the
bench also measures the whole pipeline's CPU per frame (every thread, with an instant stand-in)
and runs the stand-in at ``load`` x (cores) / that ("pipeline" calibration: the cores it
reports needing are the cores the pipeline really uses; the target's figure). Each run prints
the cores it kept busy (process CPU seconds / wall seconds), the seconds before the first batch
and after the last, and the steady state (the stand-in's busy share between them).
Efficiency target >= 0.9. Process start and imports are timed on their own line (a fresh
interpreter importing the pipeline, torch and transformers), not inside the figures.

    python -m bench.extract_efficiency [--preprocess fast] [--load 0.75] [--rounds 2] [--copies N]
                                       [--inputs jpeg mp4] [--allow-load]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from bench.common import OUT, check_load, record

DATA = OUT / "eff_data"
JPEG_EPISODES, CLIPS, T, CLIP_FRAMES = 48, 24, 8, 48
#: each rendered episode/clip appears this many times (hard links: distinct paths, same bytes), so
#: that the run is long against extract's fixed costs (planning, model load, finalising)
COPIES = 4
#: copies a run uses by default, per input: runs of similar length at the stand-in's rate, ~7 s of
#: JPEG (6,144 frames) and ~10 s of mp4 (768 frames). A 1,536-frame JPEG run lasts ~1.5 s, of
#: which extract's per-run costs (listing, the first decode, the last commit, finalising: ~0.1 s,
#: printed apart as seconds to the first batch and after the last) are 7%; a real extraction
#: runs for hours. ``--copies 4`` gives the short JPEG run.
RUN_COPIES = {"feed_jpeg512": 16, "feed_mp4_640x480": COPIES}


def _render() -> dict[str, Path]:
    """Two videos-source roots (written once): frame folders of 512x512 JPEGs, 640x480 mp4s,
    each episode/clip ``COPIES`` times."""
    import av
    import cv2

    from bench.feed_rate import _frames

    roots = {"feed_jpeg512": DATA / "jpeg512", "feed_mp4_640x480": DATA / "mp4_640x480"}
    done = DATA / "done"
    if done.exists():
        return roots
    shutil.rmtree(DATA, ignore_errors=True)
    for e in range(JPEG_EPISODES):
        d = roots["feed_jpeg512"] / "train" / f"ep{e:03d}"
        d.mkdir(parents=True)
        for k, rgb in enumerate(_frames(T, 512, 512, seed=e)):
            cv2.imwrite(str(d / f"{k:04d}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    (roots["feed_mp4_640x480"] / "train").mkdir(parents=True)
    for c in range(CLIPS):
        with av.open(str(roots["feed_mp4_640x480"] / "train" / f"clip{c:03d}.mp4"), "w") as out:
            s = out.add_stream("libx264", rate=10)
            s.width, s.height, s.pix_fmt = 640, 480, "yuv420p"
            s.options = {"crf": "23"}
            for rgb in _frames(CLIP_FRAMES, 640, 480, seed=100 + c):
                out.mux(s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
            out.mux(s.encode(None))
    for root in roots.values():
        _link_copies(sorted((root / "train").iterdir()), root / "train", range(1, COPIES))
    done.write_text("ok")
    return roots


def _link_copies(originals: list[Path], folder: Path, copies) -> None:
    """``folder/copy{c}_{name}`` for each original and c in ``copies``: hard links (frames folders
    are made anew, their files linked): distinct paths, the same bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    for c in copies:
        for src in originals:
            dst = folder / f"copy{c}_{src.name}"
            if src.is_dir():
                dst.mkdir()
                for f in src.iterdir():
                    os.link(f, dst / f.name)
            else:
                os.link(src, dst)


def make_data(copies: int = COPIES) -> dict[str, Path]:
    """The two roots with every rendered episode/clip present ``copies`` times (hard links)."""
    roots = _render()
    if copies == COPIES:
        return roots
    out = {name: DATA / f"x{copies}" / root.name for name, root in roots.items()}
    done = DATA / f"x{copies}" / "done"
    if done.exists():
        return out
    shutil.rmtree(done.parent, ignore_errors=True)
    for name, root in roots.items():
        originals = sorted(p for p in (root / "train").iterdir() if not p.name.startswith("copy"))
        _link_copies(originals, out[name] / "train", range(copies))
    done.write_text("ok")
    return out


#: the stand-in's outputs: ViT-L-sized features (D 1024, pooled 4 x 4 x D fp16 + cls: ~34 KB a
#: frame, what the cache writes for a real ViT-L), or the tiny test model's (D 48: ~1.6 KB)
FEATURES = {"vitl": "vitl16-width", "tiny": "tiny"}


def project_file(roots: dict[str, Path], preprocess: str, batch_size: int, features: str = "vitl") -> Path:
    from navcache.pipeline.encoders.tiny import make_random_dinov3

    size = FEATURES[features]
    model = make_random_dinov3(OUT / "models" / f"dinov3-{size}-224", size=size, seed=0, image_size=224)
    cfg = {
        "cache_root": str(OUT / "eff_cache"),
        "backend": "zarr",
        "datasets": {name: {"source": "videos", "root": str(root), "splits": ["train"], "stages": ["frame-features"],
                            "options": {"num_frames": T}, "part_size": 16} for name, root in roots.items()},
        # every frame decoded and encoded: the copies (hard links) would otherwise be served from
        # the run's memos (decoded frames, encoded frames), and this bench measures the feed, not reuse
        "stages": {"frame-features": {"encoder": {"model": str(model), "device": "cpu", "preprocess": preprocess}, "batch_size": batch_size,
                                      "dedup_frames": False}},
        "run": {"decoded_frames_mb": 0},
    }
    path = OUT / "eff_project" / "navcache.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def dim_of(project) -> int:
    """The frame-features encoder's width (what the stand-in's outputs must have)."""
    import json

    model = Path(project.stage_settings("frame-features").encoder.model)
    return int(json.loads((model / "config.json").read_text())["hidden_size"])


class StandIn:
    """Replaces ``HFVisionEncoder.encode_on_device`` (what frame-features calls): sleeps n / fps
    seconds (no CPU, GIL released) and returns what a GPU's forward leaves for the host: views of
    buffers made once (no CPU work per batch), seeded random values (zeros would compress to
    nothing in the zstd chunks; real features do not), and a patch grid already at the pooling
    grid (a GPU pools on the device, inside the time the stand-in sleeps: the host only copies
    the pooled grid)."""

    def __init__(self, fps: float, dim: int, grid: int = 4):
        self.fps, self.dim, self.grid = fps, dim, grid
        #: (start, end) of every batch it held the device for, perf_counter seconds
        self.calls: list[tuple[float, float]] = []

    def install(self) -> None:
        from navcache.pipeline.encoders.hf_vision import HFVisionEncoder

        import torch

        standin = self
        # outputs made once: a fresh torch.zeros per batch ran an OpenMP fill on the main thread's
        # team, whose spin-wait burnt ~0.3 s of CPU per 1,536 frames (a GPU's outputs cost the CPU
        # one copy, which the stage's own .cpu()/cat still does)
        g = torch.Generator().manual_seed(0)
        rows = 512  # >= any batch this bench runs (--batch-size)
        cls, patches = torch.randn(rows, self.dim, generator=g), torch.randn(rows, self.grid, self.grid, self.dim, generator=g)

        def encode(enc, x):
            if len(x) > len(cls):
                raise ValueError(f"the stand-in serves batches of at most {len(cls)} frames, not {len(x)}")
            t = time.perf_counter()
            time.sleep(len(x) / standin.fps)
            standin.calls.append((t, time.perf_counter()))
            return cls[: len(x)], patches[: len(x)]

        HFVisionEncoder.encode_on_device = encode

    def alone_fps(self, frames: int, batch_size: int) -> float:
        """The stand-in by itself over ``frames`` in batches of ``batch_size``: the baseline."""
        from navcache.pipeline.encoders.hf_vision import HFVisionEncoder

        import torch

        x = torch.zeros(batch_size, 3, 1, 1)
        t0 = time.perf_counter()
        for i in range(0, frames, batch_size):
            HFVisionEncoder.encode_on_device(None, x[: min(batch_size, frames - i)])
        return frames / (time.perf_counter() - t0)


def feed_per_core(project, dataset: str) -> float:
    """Frames/s one thread decodes and preprocesses (what the stand-in's rate is calibrated on)."""
    import torch

    from navcache.pipeline.plan import plan_split

    torch.set_num_threads(1)
    from navcache.pipeline.sources import make_source

    ds = project.dataset(dataset)
    source = make_source(ds.source, ds.root, **ds.options)
    source.decoded.max_bytes = project.run.decoded_frames_mb << 20  # as extract sets it: every frame decoded
    (sp,) = plan_split(project, dataset, "train", source=source)
    stage = sp.stage
    stage.setup()
    episodes = [ep for p in sp.parts for ep in p.episodes if not ep.quarantine] or [ep for ep in stage.source.episodes("train")]
    for ep in episodes[:2]:
        stage.prepare(ep, {})  # warm-up
    t0 = time.perf_counter()
    n = sum(stage.prepare(ep, {}).cost for ep in episodes)
    return n / (time.perf_counter() - t0)


def pipeline_cpu_per_frame(project, dataset: str, runs: int = 2) -> float:
    """CPU seconds (every thread of the process) per frame of ``extract`` with an instant device:
    decoding and preprocessing plus everything else the pipeline does (listing, hashing,
    batching, pooling, writing, committing). The first run warms up (page cache, lazy imports)."""
    StandIn(float("inf"), dim=dim_of(project)).install()
    end_to_end(project, dataset)
    cpu = []
    for _ in range(runs):
        fps, frames, busy, _ = end_to_end(project, dataset)
        cpu.append(busy / fps)  # (CPU s / wall s) / (frames / wall s)
    return statistics.median(cpu)


def end_to_end(project, dataset: str, standin: StandIn | None = None) -> tuple[float, int, float, dict]:
    """(frames/s, frames, cores busy: the process's CPU seconds over the run's wall seconds, timeline).

    The timeline (with ``standin``, the installed one) splits the run: seconds to the first batch
    (planning, model load, the first batch's decode), seconds after the last (the last commit,
    finalising), and the device's busy fraction from the first batch's start to the last's end
    (steady state: what the pipeline keeps up with once running, whatever the run's length)."""
    from navcache.pipeline.runner import ExtractOptions, extract

    shutil.rmtree(project.cache_root, ignore_errors=True)
    if standin is not None:
        standin.calls.clear()
    c0, t0 = time.process_time(), time.perf_counter()
    s = extract(project, ExtractOptions("train", datasets=(dataset,)))
    t1 = time.perf_counter()
    dt, cpu = t1 - t0, time.process_time() - c0
    assert not s.errors, s.errors
    frames = sum(st.frames_built for st in s.stages)
    timeline = {}
    if standin is not None and standin.calls:
        (first, _), (_, last) = standin.calls[0], standin.calls[-1]
        timeline = {"to_first_batch_s": round(first - t0, 3), "after_last_batch_s": round(t1 - last, 3),
                    "steady_state": round(sum(b - a for a, b in standin.calls) / (last - first), 3)}
    return frames / dt, frames, cpu / dt, timeline


def start_and_imports() -> float:
    """Seconds for a fresh interpreter to import what ``extract`` needs (outside every figure above)."""
    code = "import navcache.pipeline.runner, navcache.pipeline.stages.frame_features, torch, transformers, av, cv2, zarr"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preprocess", choices=["exact", "fast"], default="fast")
    ap.add_argument("--load", type=float, default=0.75, help="stand-in rate as a fraction of what the cores can feed")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--copies", type=int, default=None, help="times each rendered episode/clip appears (run length; "
                    "default: RUN_COPIES, runs of similar length)")
    ap.add_argument("--inputs", nargs="+", choices=["jpeg", "mp4"], default=["jpeg", "mp4"])
    ap.add_argument("--features", choices=sorted(FEATURES), default="vitl", help="the stand-in's output size (vitl: ~34 KB a frame)")
    ap.add_argument("--allow-load", action="store_true")
    a = ap.parse_args()
    load_before = check_load(a.allow_load)
    import torch

    from navcache.pipeline.config import load_config

    cores = len(os.sched_getaffinity(0))
    copies = {ds: a.copies or n for ds, n in RUN_COPIES.items()}
    roots = {ds: make_data(n)[ds] for ds, n in copies.items()}
    project = load_config(project_file(roots, a.preprocess, a.batch_size, a.features))
    rows = {}
    for ds in [r for r in roots if any(i in r for i in a.inputs)]:
        feed = feed_per_core(project, ds)
        torch.set_num_threads(cores)
        cpu_frame = pipeline_cpu_per_frame(project, ds)
        print(f"{ds}: decode + preprocess {1e3 / feed:.3f} ms a frame on one core; the whole pipeline "
              f"{1e3 * cpu_frame:.3f} CPU ms a frame; cores for 1,000 fps: {1000 * cpu_frame:.2f}", flush=True)
        rows[ds] = {"copies": copies[ds], "feed_fps_per_core": round(feed, 1), "pipeline_cpu_ms_per_frame": round(1e3 * cpu_frame, 3),
                    "cores_for_1000_fps": round(1000 * cpu_frame, 2)}
        # "pipeline": the stand-in needs load x cores of the pipeline's measured CPU (the target's
        # figure); "decode": as if nothing but decoding cost CPU (stricter: the rest comes free)
        for calibration, fps in (("pipeline", a.load * cores / cpu_frame), ("decode", a.load * cores * feed)):
            standin = StandIn(fps, dim=dim_of(project))
            standin.install()
            runs = []
            for _ in range(a.rounds):
                e2e, frames, busy, timeline = end_to_end(project, ds, standin)
                alone = standin.alone_fps(frames, a.batch_size)
                runs.append({"end_to_end_fps": round(e2e, 1), "standin_fps": round(alone, 1), "efficiency": round(e2e / alone, 3),
                             "cores_busy": round(busy, 2), **timeline})
                print(ds, calibration, runs[-1], flush=True)
            rows[ds][calibration] = {"frames": frames, "standin_target_fps": round(fps, 1), "runs": runs,
                                     "cores_needed": round(fps * (cpu_frame if calibration == "pipeline" else 1 / feed), 2),
                                     "efficiency_median": statistics.median(r["efficiency"] for r in runs)}
    imports = start_and_imports()
    print(f"process start + imports (not in the figures): {imports:.2f} s", flush=True)
    load_after = check_load(a.allow_load)
    record(f"extract_efficiency_{a.preprocess}" + ("" if a.copies is None else f"_x{a.copies}") + ("" if a.features == "vitl" else f"_{a.features}"), {
        "preprocess": a.preprocess, "load_fraction": a.load, "cores": cores, "copies": copies, "batch_size": a.batch_size,
        "encoder": f"stand-in (sleep per batch), DINOv3's 224x224 preprocessing, outputs D {dim_of(project)}", "features": a.features, "datasets": rows,
        "process_start_and_imports_s": round(imports, 2), "load_before": load_before, "load_after": load_after,
        "torch": torch.__version__, "numpy": np.__version__,
    })


if __name__ == "__main__":
    main()
