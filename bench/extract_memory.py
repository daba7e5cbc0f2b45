"""Peak RSS of ``navcache extract`` stays flat as the dataset grows: 10x the episodes, < 1.2x the peak.

Each run is a fresh process (``navcache extract`` on the demo world at scale 1 and at scale 10,
same encoder and settings), its resident memory sampled every 10 ms, children included.

    python bench/extract_memory.py [--big 10] [--size tiny]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bench.common import demo_project, record

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mb(cfg: Path) -> tuple[float, float]:
    shutil.rmtree(cfg.parent / "cache", ignore_errors=True)
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "extract", "--split", "train", "-c", str(cfg), "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc, peak = psutil.Process(p.pid), 0
    while p.poll() is None:
        try:
            rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.01)
    assert p.returncode == 0, f"extract failed ({p.returncode})"
    return peak / 2**20, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", type=float, default=10.0)
    ap.add_argument("--size", default="tiny")
    a = ap.parse_args()
    small = demo_project("mem_small", 1.0, a.size)
    big = demo_project("mem_big", a.big, a.size)
    rows = {}
    for name, cfg in (("scale1", small), (f"scale{a.big:g}", big)):
        mb, secs = peak_rss_mb(cfg)
        rows[name] = {"peak_rss_mb": round(mb, 1), "seconds": round(secs, 1)}
        print(name, rows[name], flush=True)
    ratio = rows[f"scale{a.big:g}"]["peak_rss_mb"] / rows["scale1"]["peak_rss_mb"]
    record("extract_memory", {"encoder": a.size, "runs": rows, "episodes_factor": a.big, "peak_rss_ratio": round(ratio, 3)})


if __name__ == "__main__":
    main()
