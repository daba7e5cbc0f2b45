"""NaVILA sidecar export: records/s at 350K records, and peak RSS flat in the number of records.

A synthetic poses cache (random walks, real spec, real parts, 4096 episodes per part) of N and
N/10 records; each export runs in a fresh process whose peak RSS is sampled every 10 ms.

    python -m bench.export_navila [--records 350000]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np
import psutil

from bench.common import OUT, record


def build_cache(n: int, part_size: int = 4096):
    from navcache.cache_specs.manifest import finalize_cache
    from navcache.cache_specs.parts import EpisodeResult, write_part
    from navcache.cache_specs.specs import get_spec
    from navcache.pipeline.motion import bin_steps, egocentric_deltas

    d = OUT / f"poses_{n}"
    if (d / "manifest.json").exists():
        return d
    spec, rng, expected = get_spec("poses"), np.random.default_rng(0), {}
    for pi, start in enumerate(range(0, n, part_size)):
        results = []
        for e in range(start, min(n, start + part_size)):
            poses = np.cumsum(rng.normal(0, 0.3, (8, 3)), axis=0)
            deltas = egocentric_deltas(poses)
            db, yb = bin_steps(deltas)
            arrays = {"poses": poses.astype(np.float32), "frame_index": np.arange(8, dtype=np.int64), "padded": np.zeros(8, bool), "deltas": deltas.astype(np.float32), "dist_bins": db, "yaw_bins": yb, "step_valid": np.ones(7, bool)}
            results.append(EpisodeResult(f"ep{e:07d}-7", arrays))
        pid = f"part-{pi:05d}"
        write_part(d / "parts", pid, f"fp{pi}", spec, {"T": 8, "S": 7}, results)
        expected[pid] = f"fp{pi}"
    finalize_cache(d, expected, {"stage": "poses", "backend": "zarr"})
    return d


def run_export(cache, out) -> tuple[float, float]:
    code = f"from navcache.heads.exports.navila_poses import export_navila_poses; export_navila_poses({str(cache)!r}, {str(out)!r})"
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", code])
    proc, peak = psutil.Process(p.pid), 0
    while p.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.01)
    assert p.returncode == 0
    return time.perf_counter() - t0, peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=350_000)
    a = ap.parse_args()
    rows = {}
    for n in (a.records // 10, a.records):
        cache = build_cache(n)
        secs, mb = run_export(cache, OUT / f"sidecar_{n}.jsonl")
        rows[n] = {"seconds": round(secs, 2), "records_per_s": round(n / secs), "peak_rss_mb": round(mb, 1)}
        print(n, rows[n], flush=True)
    small, big = rows[a.records // 10], rows[a.records]
    record("export_navila", {"runs": rows, "peak_rss_ratio_10x": round(big["peak_rss_mb"] / small["peak_rss_mb"], 3)})


if __name__ == "__main__":
    main()
