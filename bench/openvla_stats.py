"""``navcache export openvla-stats`` machinery over 1M synthetic rows: rows/s and flat peak RSS.

What runs: ``heads.exports.openvla_stats.StreamingStats`` fed exactly as ``openvla_statistics`` feeds
it (blocks of ``_BLOCK`` = 65,536 action rows [b, 2] float32, in order), over rows generated block by
block from a seeded generator (VAMOS-like velocities: v_x ~ 0.2 +- 0.06, v_y ~ 0 +- 0.03, 1% outliers).
Not through a written cache: a 10M-sample velocity cache would spend the run in the cache writer,
and this measures the statistics pass; the cache-reading side (``_live_rows``) is the same index
streaming as ``navcache export navila-poses``. Each measurement runs in its own subprocess (peak RSS
is per process): streamed at 1x and 10x rows, and the baseline, the same statistics in memory
(``np.mean/std/min/max/quantile`` over the whole [N, 2] array, what a one-shot script does) at 1x.
The result is checked equal to the baseline's, bit for bit on min/max/quantiles.

    python -m bench.openvla_stats [--rows 1000000] [--allow-load]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

from bench.common import check_load, record


def blocks(n: int, block: int, seed: int = 0):
    """float32 [b, 2] blocks of n synthetic action rows, generated lazily."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, block):
        b = min(block, n - start)
        x = np.stack([rng.normal(0.2, 0.06, b), rng.normal(0.0, 0.03, b)], 1)
        out = rng.random(b) < 0.01
        x[out] *= 5.0
        yield x.astype(np.float32)


def child(mode: str, n: int) -> dict:
    from navcache.heads.exports.openvla_stats import _BLOCK, StreamingStats

    gen_s = 0.0
    t = time.perf_counter()
    if mode == "stream":
        stats = StreamingStats(n, 2)
        it = blocks(n, _BLOCK)
        while True:
            g = time.perf_counter()
            x = next(it, None)
            gen_s += time.perf_counter() - g
            if x is None:
                break
            stats.update(x)
        res = stats.result()
    else:
        g = time.perf_counter()
        x = np.concatenate(list(blocks(n, _BLOCK))).astype(np.float64)
        gen_s = time.perf_counter() - g
        res = {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "max": x.max(0).tolist(), "min": x.min(0).tolist(),
               "q01": np.quantile(x, 0.01, axis=0).tolist(), "q99": np.quantile(x, 0.99, axis=0).tolist()}
    total = time.perf_counter() - t
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "rows": n, "stats_s": total - gen_s, "rows_per_s": n / (total - gen_s), "peak_rss_mb": rss_mb, "result": res}


def run(mode: str, n: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.openvla_stats", "--child", mode, "--rows", str(n)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--allow-load", action="store_true")
    ap.add_argument("--child", choices=("stream", "memory"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rows)))
        return
    check_load(args.allow_load)
    s1, s10, mem = run("stream", args.rows), run("stream", 10 * args.rows), run("memory", args.rows)
    for k in ("min", "max", "q01", "q99"):
        if s1["result"][k] != mem["result"][k]:
            raise SystemExit(f"streamed {k} {s1['result'][k]} differs from numpy's {mem['result'][k]}")
    if not np.allclose(s1["result"]["mean"], mem["result"]["mean"], rtol=1e-12) or not np.allclose(s1["result"]["std"], mem["result"]["std"], rtol=1e-9):
        raise SystemExit("streamed mean/std differ from numpy's")
    load = check_load(args.allow_load)
    rss_ratio = s10["peak_rss_mb"] / s1["peak_rss_mb"]
    record("openvla_stats", {
        "rows": args.rows, "stream_rows_per_s": s1["rows_per_s"], "stream_10x_rows_per_s": s10["rows_per_s"],
        "memory_rows_per_s": mem["rows_per_s"], "speed_vs_memory": s1["rows_per_s"] / mem["rows_per_s"],
        "stream_peak_rss_mb": s1["peak_rss_mb"], "stream_10x_peak_rss_mb": s10["peak_rss_mb"], "memory_peak_rss_mb": mem["peak_rss_mb"],
        "rss_10x_over_1x": rss_ratio, "target_rss_10x_over_1x": 1.2, "meets_target": rss_ratio < 1.2, "load": load})


if __name__ == "__main__":
    main()
