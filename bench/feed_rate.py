"""Feed rate: frames/s per CPU core delivered ready for the encoder, next to the bare decoder.

Inputs (real sizes, made once under bench/out/feed/): 512x512 JPEGs (NaVILA: demo-world renders
with sensor noise, quality 90, episodes of 8), 640x480 H.264 mp4s (rover: 48 frames each, libx264
crf 23, 8 frames sampled uniformly per clip) and VGGT's 518 crop of the same JPEGs. The process is
pinned to ONE core, every thread pool at 1, and each path runs over the same files in the same run,
rounds interleaved (medians reported).

Paths, per input:
  bare        the decoder alone: PIL (libjpeg-turbo) ``Image.open(..).convert("RGB")`` to numpy, or
              PyAV decoding every frame of a clip (one thread) and converting the sampled ones to RGB
  exact       navcache's decode (``read_jpegs`` / ``read_video_sampled``: checks, strict decoding)
              + the encoder's exact preprocessing on the CPU (DINOv3 224, equal to the processor)
  fast        decode at reduced size (JPEG DCT scaling ``fit=True``; video through FFmpeg's scaler
              ``size=``) + ``preprocess: fast`` (uint8 resize); within one grey level + the decode's
              difference (printed) of ``exact``
  device-cpu  what the CPU does for a CUDA encoder: navcache's decode + the uint8 batch (the resize
              and normalisation run on the device; the pinned copy is a DMA). Without CUDA only
              the CPU part is timed; with CUDA the whole ``preprocess(device="cuda")`` is.

Ratio = path frames/s / bare frames/s (target >= 0.8). Cores for a 1,000 frames/s GPU = 1000 / the
per-core rate of the path a GPU machine runs (device-cpu), and of the CPU-only fast path.

    python -m bench.feed_rate [--rounds 5] [--allow-load]
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from bench.common import OUT, check_load, record

DATA = OUT / "feed"
JPEG_EPISODES, T, CLIPS, CLIP_FRAMES = 12, 8, 6, 48
TARGET = 0.8


def _frames(n: int, w: int, h: int, seed: int) -> list[np.ndarray]:
    """Demo-world renders at w x h with sensor noise: uint8 [h, w, 3] each."""
    from navcache.pipeline.demo.navila_writer import make_episode
    from navcache.pipeline.demo.render import Camera, render

    layout, traj = make_episode(0, "train", seed)
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        rgb = render(layout, traj.poses[k % len(traj.poses)], Camera(width=w, height=h)).rgb.astype(np.int16)
        out.append(np.clip(rgb + rng.normal(0, 4, (h, w, 1)), 0, 255).astype(np.uint8))
    return out


def make_data() -> tuple[list[list[Path]], list[Path]]:
    """(JPEG episodes: lists of 8 paths, mp4 clips); written once."""
    import av
    import cv2

    jpeg_dir, clip_dir = DATA / "jpeg512", DATA / "mp4_640x480"
    episodes = [[jpeg_dir / f"ep{e:02d}_{k}.jpg" for k in range(T)] for e in range(JPEG_EPISODES)]
    clips = [clip_dir / f"clip{c:02d}.mp4" for c in range(CLIPS)]
    if all(p.exists() for ep in episodes for p in ep) and all(c.exists() for c in clips):
        return episodes, clips
    jpeg_dir.mkdir(parents=True, exist_ok=True)
    clip_dir.mkdir(parents=True, exist_ok=True)
    for e, ep in enumerate(episodes):
        for p, rgb in zip(ep, _frames(T, 512, 512, seed=e)):
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
            p.write_bytes(buf.tobytes())
    for c, path in enumerate(clips):
        tmp = path.with_suffix(".tmp.mp4")
        with av.open(str(tmp), "w") as out:
            s = out.add_stream("libx264", rate=10)
            s.width, s.height, s.pix_fmt = 640, 480, "yuv420p"
            s.options = {"crf": "23", "preset": "medium"}
            for rgb in _frames(CLIP_FRAMES, 640, 480, seed=100 + c):
                out.mux(s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
            out.mux(s.encode(None))
        os.replace(tmp, path)
    return episodes, clips


# ------------------------------------------------------------------------------------- paths


def bare_jpeg(episodes) -> int:
    from PIL import Image

    n = 0
    for ep in episodes:
        for p in ep:
            with Image.open(p) as im:
                np.asarray(im.convert("RGB"))
            n += 1
    return n


def bare_video(clips, sample) -> int:
    import av

    n = 0
    for path in clips:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            s.thread_type, s.codec_context.thread_count = "NONE", 1
            want = set(sample(s.frames))
            for k, frame in enumerate(c.decode(s)):
                if k in want:
                    frame.to_ndarray(format="rgb24")
                    n += 1
    return n


def feed_jpeg(episodes, pre, fit: bool, resize_to=(224, 224), device=None) -> int:
    from navcache.pipeline.decode import read_jpegs

    n = 0
    for ep in episodes:
        x = pre(read_jpegs(ep, resize_to, fit=fit), device=device) if pre else read_jpegs(ep, resize_to, fit=fit)
        n += len(x)
    _sync(device)
    return n


def feed_video(clips, sample, pre, size=None, device=None) -> int:
    from navcache.pipeline.decode import read_video_sampled

    n = 0
    for path in clips:
        pixels, _ = read_video_sampled(path, sample, size=size)
        x = pre(pixels, device=device) if pre else pixels
        n += len(x)
    _sync(device)
    return n


def feed_vggt(episodes, fast: bool = False, uint8: bool = False, device=None) -> int:
    """VGGT's crop of each episode as ``VGGTAdapter.preprocess`` + ``infer`` feed it: float32 on
    the CPU, or with ``uint8`` what the CPU hands a CUDA model (exact: PIL's uint8 crop; fast: the
    decoded frames, unresized), which a CUDA ``device`` receives pinned, divides by 255 and (fast)
    resizes and crops there (``device_crop``); without CUDA only the CPU's share is timed."""
    from navcache.pipeline.decode import read_jpegs
    from navcache.pipeline.encoders.vggt import decode_target, device_crop, frames_for_device, preprocess_crop

    n = 0
    for ep in episodes:
        pixels = read_jpegs(ep, decode_target(), fit=True) if fast else read_jpegs(ep)
        x = (frames_for_device(pixels) if fast else preprocess_crop(pixels, as_uint8=True)) if uint8 else preprocess_crop(pixels, fast=fast)
        if device:
            x = device_crop(x.pin_memory().to(device, non_blocking=True).float().div_(255)).contiguous()
        n += len(x)
    _sync(device)
    return n


def _sync(device) -> None:
    if device and device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def pixel_difference(episodes, clips, sample, exact, fast) -> dict:
    """Max and mean |fast - exact| of the delivered tensors (normalised units), per input."""
    import torch

    from navcache.pipeline.decode import read_jpegs, read_video_sampled

    a, b = exact(read_jpegs(episodes[0], (224, 224))), fast(read_jpegs(episodes[0], (224, 224), fit=True))
    pa, _ = read_video_sampled(clips[0], sample)
    pb, _ = read_video_sampled(clips[0], sample, size=(224, 224))
    va, vb = exact(pa), fast(pb)
    d = lambda x, y: {"max": round(float((x - y).abs().max()), 4), "mean": round(float((x - y).abs().mean()), 4)}  # noqa: E731
    only_pre = fast(read_jpegs(episodes[0], (224, 224)))  # the uint8 resize alone, no reduced decode
    return {"jpeg": d(a, b), "jpeg_uint8_resize_only": d(a, only_pre), "video": d(va, vb), "units": "normalised ((x/255 - mean)/std)",
            "torch": torch.__version__}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--allow-load", action="store_true")
    a = ap.parse_args()
    load_before = check_load(a.allow_load)

    import cv2
    import torch

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from navcache.pipeline.encoders.hf_preprocessing import build_preprocessor
    from navcache.pipeline.encoders.tiny import DINOV3_PROCESSOR
    from navcache.pipeline.sampling import uniform_indices

    episodes, clips = make_data()
    sample = lambda n: uniform_indices(n, T).tolist()  # noqa: E731  (the rover source's rule)
    exact, fast = build_preprocessor(DINOV3_PROCESSOR), build_preprocessor(DINOV3_PROCESSOR, fast=True)
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else None
    paths = {
        "jpeg512": {
            "bare": lambda: bare_jpeg(episodes),
            "exact": lambda: feed_jpeg(episodes, exact, fit=False),
            "fast": lambda: feed_jpeg(episodes, fast, fit=True),
            "device-cpu": lambda: feed_jpeg(episodes, exact if cuda else None, fit=False, device=dev),
        },
        "mp4_640x480": {
            "bare": lambda: bare_video(clips, sample),
            "exact": lambda: feed_video(clips, sample, exact),
            "fast": lambda: feed_video(clips, sample, fast, size=(224, 224)),
            "device-cpu": lambda: feed_video(clips, sample, exact if cuda else None, device=dev),
        },
        "vggt518_from_jpeg512": {
            "bare": lambda: bare_jpeg(episodes),
            "exact": lambda: feed_vggt(episodes),
            "fast": lambda: feed_vggt(episodes, fast=True),
            "device-cpu": lambda: feed_vggt(episodes, uint8=True, device=dev),
            "fast device-cpu": lambda: feed_vggt(episodes, fast=True, uint8=True, device=dev),
        },
    }
    times: dict[str, dict[str, list[float]]] = {k: {p: [] for p in v} for k, v in paths.items()}
    counts: dict[str, dict[str, int]] = {k: {} for k in paths}
    for fn in (f for v in paths.values() for f in v.values()):
        fn()  # warm-up: page cache, lazy imports, allocators
    for r in range(a.rounds):
        for inp, v in paths.items():
            for name, fn in v.items():
                t0 = time.perf_counter()
                counts[inp][name] = fn()
                times[inp][name].append(time.perf_counter() - t0)
    rows = {}
    for inp, v in times.items():
        fps = {p: counts[inp][p] / statistics.median(ts) for p, ts in v.items()}
        rows[inp] = {p: {"fps_per_core": round(f, 1), "ms_per_frame": round(1000 / f, 2), "ratio_to_bare": round(f / fps["bare"], 3),
                         "cores_for_1000_fps": round(1000 / f, 1)} for p, f in fps.items()}
        print(inp, {p: (r["fps_per_core"], r["ratio_to_bare"]) for p, r in rows[inp].items()}, flush=True)
    load_after = check_load(a.allow_load, slack=load_before["cores"] - 1)  # pinned to one core now
    record("feed_rate", {
        "cuda": torch.cuda.get_device_name(0) if cuda else None,
        "device_cpu_note": "CUDA: decode + pinned copy + preprocess on the device (synchronised)" if cuda else
                           "no CUDA here: decode + uint8 batch only (the pinned copy and the device resize are not timed)",
        "inputs": {"jpeg512": f"{JPEG_EPISODES} episodes x {T} JPEGs 512x512 q90", "mp4_640x480": f"{CLIPS} clips x {CLIP_FRAMES} frames, {T} sampled",
                   "vggt518_from_jpeg512": "exact = PIL bicubic to 518x518, [0,1] float32; fast = torch uint8 antialiased "
                                           "bicubic on the CPU (no reduced decode: 512 < 2 x 518); device-cpu = PIL's uint8 crop "
                                           "(CUDA: + pinned copy, /255 there); fast device-cpu = the decoded uint8 frames "
                                           "(CUDA: + pinned copy, /255, float bicubic resize and crop there)"},
        "encoder_input": "DINOv3 224x224 float32", "rounds": a.rounds, "target_ratio": TARGET,
        "rates": rows,
        "pixel_difference_fast_vs_exact": pixel_difference(episodes, clips, sample, exact, fast),
        "load_before": load_before, "load_after": load_after,
    })


if __name__ == "__main__":
    main()
