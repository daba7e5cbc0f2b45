"""The GPU checks of issue 14 in one prepared run; prints one line per check and the ratios.

    python -m bench.gpu_check            # on a GPU machine (a few minutes)
    python -m bench.gpu_check --smoke    # anywhere, seconds: tiny sizes, GPU-only parts skipped

1. precision: ``precision: auto`` resolves to bf16 autocast on CUDA capability >= 8.
2. auto batch: ``BatchSizer("auto")`` over a ViT-L-size random-init DINOv3 starting from
   ``--start`` frames finds the largest halving that fits (real CUDA out-of-memory errors).
3. extraction efficiency: ``extract`` frames/s / bare-encoder frames/s (``bench/extract_efficiency``),
   side by side in this run, ViT-L size (target >= 0.95).
4. geometry throughput: frames/s of a VGGT-1B-size aggregator (24 frame + 24 global attention
   blocks, width 1024, 16 heads, 518x518 frames = 1369 patches + 5 tokens) over N_m frames in one
   pass under bf16 autocast, as ``VGGTAdapter.infer`` runs it, and its ratio to the ViT-L frames/s.
   A proxy: VGGT itself is not on PyPI and its weights cannot be fetched here.
"""
from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn

from bench.common import demo_project, record


def device_line() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (capability {'.'.join(map(str, torch.cuda.get_device_capability(0)))})"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def check_precision(cuda: bool) -> dict:
    from navcache.pipeline.encoders.base import resolve_precision

    if not cuda:
        print("[skip] precision: no CUDA device; on CPU 'auto' is fp32 (autocast off)")
        return {"cpu": resolve_precision("auto", "cpu")}
    got = resolve_precision("auto", "cuda")
    want = "bf16" if torch.cuda.get_device_capability(0)[0] >= 8 else "fp16"
    print(f"[{'ok' if got == want else 'FAIL'}] precision: auto -> {got} (expected {want})")
    return {"cuda": got, "ok": got == want}


def check_auto_batch(encoder, start: int, image: int, cuda: bool) -> dict:
    from navcache.pipeline.encoders.base import BatchSizer

    sizer = BatchSizer("auto", max_size=start)
    # one frame broadcast to `start` rows: no host memory; each chunk is materialised on the device
    x = torch.rand(1, 3, image, image).expand(start, 3, image, image)
    key = (encoder.s.model, tuple(x.shape[1:]), encoder.resolved_device())
    t0 = time.perf_counter()
    sizer.run(key, x, lambda c: encoder.encode(c)[0].shape[0])
    found = sizer.known().get(key, start)
    tried = [n for _, n in sizer.failed]
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    print(f"[ok] auto batch: {found} frames (out of memory at {tried or 'none'}; peak {peak:.1f} GiB; {time.perf_counter() - t0:.1f} s)")
    return {"start": start, "found": found, "oom_at": tried, "peak_gib": round(peak, 2)}


def check_efficiency(size: str, scale: float, batch: int | str) -> dict:
    from bench.extract_efficiency import end_to_end
    from navcache.pipeline.config import load_config

    project = load_config(demo_project(f"gpu_check_{size}", scale, size, datasets=("demo_navila",), batch_size=batch))
    end_to_end(project, "demo_navila")  # warm-up: page cache, lazy imports, allocator
    e2e, n1, _, _ = end_to_end(project, "demo_navila")
    bare = bare_encoder_fps(project, "demo_navila", n1)
    ratio = e2e / bare
    print(f"[{'ok' if ratio >= 0.95 else 'below target'}] extraction efficiency ({size}, {n1} frames): end-to-end {e2e:.1f} "
          f"frames/s / bare encoder {bare:.1f} frames/s = {ratio:.3f} (target >= 0.95)")
    return {"frames": n1, "end_to_end_fps": round(e2e, 2), "bare_fps": round(bare, 2), "ratio": round(ratio, 3)}


def bare_encoder_fps(project, dataset: str, frames: int) -> float:
    """Frames/s of the frame-features stage's encoder alone (``encode_on_device`` on one preprocessed batch of
    the stage's batch size, repeated over ``frames``): the baseline ``extract`` is measured against."""
    import numpy as np

    from navcache.pipeline.plan import make_stage
    from navcache.pipeline.sources import make_source

    ds = project.dataset(dataset)
    stage = make_stage(project, dataset, "frame-features", make_source(ds.source, ds.root, **ds.options))
    stage.setup()
    w, h = stage.resize_to
    n = min(stage.batch_cost, frames)
    x = stage.encoder.preprocess(np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8))
    stage.encoder.encode_on_device(x)  # warm-up
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    t0, done = time.perf_counter(), 0
    while done < frames:
        stage.encoder.encode_on_device(x)  # the forward alone: its outputs stay on the device
        done += n
    if cuda:
        torch.cuda.synchronize()
    return done / (time.perf_counter() - t0)


class _Block(nn.Module):
    """A pre-norm transformer block (attention via SDPA, MLP 4x) as VGGT's aggregator uses."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):  # [B, T, C]
        b, t, c = x.shape
        q, k, v = self.qkv(self.n1(x)).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.n2(x))


class AggregatorProxy(nn.Module):
    """VGGT's alternating attention: frame blocks over each frame's P tokens, global blocks over all S*P."""

    def __init__(self, dim: int, heads: int, depth: int):
        super().__init__()
        self.frame = nn.ModuleList(_Block(dim, heads) for _ in range(depth))
        self.glob = nn.ModuleList(_Block(dim, heads) for _ in range(depth))

    def forward(self, tokens):  # [S, P, C]
        s, p, c = tokens.shape
        for fb, gb in zip(self.frame, self.glob):
            tokens = gb(fb(tokens).reshape(1, s * p, c)).reshape(s, p, c)
        return tokens


def check_geometry(cuda: bool, smoke: bool, frames: list[int], encoder_fps: float | None) -> dict:
    dim, heads, depth, side = (32, 2, 2, 56) if smoke else (1024, 16, 24, 518)
    dev = "cuda" if cuda else "cpu"
    model = AggregatorProxy(dim, heads, depth).to(dev).eval()
    tokens_per_frame = (side // 14) ** 2 + 5
    out = {}
    for n in frames:
        x = torch.randn(n, tokens_per_frame, dim, device=dev)
        try:
            with torch.inference_mode(), torch.autocast(dev, dtype=torch.bfloat16, enabled=cuda):
                model(x)  # warm-up
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                model(x)
                if cuda:
                    torch.cuda.synchronize()
            fps = n / (time.perf_counter() - t0)
        except torch.OutOfMemoryError as e:
            print(f"[ok] geometry N_m={n}: out of memory ({str(e).split('.')[1].strip()}): what max_frames_on_oom is for")
            out[n] = "oom"
            torch.cuda.empty_cache()
            continue
        ratio = f"; {fps / encoder_fps:.3f} of the DINOv3 encoder's frames/s" if encoder_fps else ""
        print(f"[ok] geometry ({'VGGT-1B-size' if not smoke else 'tiny'} aggregator) N_m={n}: {fps:.1f} frames/s{ratio}")
        out[n] = round(fps, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on any machine, in seconds")
    ap.add_argument("--start", type=int, default=16384, help="frames the auto batch search starts from")
    ap.add_argument("--scale", type=float, default=1.0, help="demo world scale for the efficiency check")
    a = ap.parse_args()
    cuda = torch.cuda.is_available()
    print(f"device: {device_line()}")
    res: dict = {"device": device_line(), "smoke": a.smoke, "precision": check_precision(cuda)}
    from navcache.pipeline.encoders.hf_vision import EncoderSettings, HFVisionEncoder
    from navcache.pipeline.encoders.tiny import make_random_dinov3

    from bench.common import OUT

    size = "tiny" if a.smoke else "vitl16"
    model = make_random_dinov3(OUT / "models" / f"dinov3-{size}-224", size=size, seed=0, image_size=224)
    enc = HFVisionEncoder(EncoderSettings(model=str(model)))
    if cuda or a.smoke:
        res["auto_batch"] = check_auto_batch(enc, 64 if a.smoke else a.start, 224, cuda)
    else:
        print("[skip] auto batch: no CUDA device (a ViT-L search on CPU takes hours; --smoke runs a tiny one)")
    if cuda or a.smoke:
        res["efficiency"] = check_efficiency(size, 0.1 if a.smoke else a.scale, "auto" if cuda else 32)
    else:
        print("[skip] extraction efficiency: no CUDA device (bench/extract_efficiency.py measures CPU)")
    fps = res.get("efficiency", {}).get("bare_fps")
    if cuda or a.smoke:
        res["geometry_fps"] = check_geometry(cuda, a.smoke, [2, 4] if a.smoke else [16, 32, 64, 128], fps)
    else:
        print("[skip] geometry throughput: no CUDA device")
    record("gpu_check_smoke" if a.smoke else "gpu_check", res)


if __name__ == "__main__":
    main()
