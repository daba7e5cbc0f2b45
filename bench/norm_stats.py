"""norm-stats from the robot_meta cache vs a pass that decodes the videos (openpi's way).

openpi's ``compute_norm_stats`` iterates a LeRobotDataset, which decodes every camera frame of
every sample; users report hours (openpi#504, #571, #688). Both passes here read the same demo
LeRobot v3.0 dataset (AV1, two cameras, several episodes per file) and compute the same
statistics; the baseline decodes each episode's video segments through the ``lerobot`` source
(one seek + one segment decode per camera, already cheaper than per-sample decoding), the cache
pass streams ``robot_meta``. Records = frames. Prints the ratio, side by side in one run.

    python -m bench.norm_stats [--scale 8] [--horizon 10] [--allow-load]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time

import yaml

from bench.common import OUT, check_load, record


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=8.0)
    ap.add_argument("--horizon", type=int, default=10)
    ap.add_argument("--allow-load", action="store_true")
    args = ap.parse_args()
    check_load(args.allow_load)
    from navcache.heads.exports.norm_stats import norm_stats
    from navcache.pipeline.demo.lerobot_writer import write_lerobot_dataset
    from navcache.pipeline.sources import make_source

    work = OUT / f"norm_stats_{args.scale:g}"
    shutil.rmtree(work, ignore_errors=True)
    info = write_lerobot_dataset(work / "ds", "v3.0", scale=args.scale)
    (work / "navcache.yaml").write_text(yaml.safe_dump({"cache_root": "cache", "datasets": {
        "walks": {"source": "lerobot", "root": str(work / "ds"), "splits": ["train"], "stages": ["robot-meta"], "part_size": 64}}}))
    subprocess.run([sys.executable, "-m", "navcache.cli", "extract", "--split", "train"], cwd=work, check=True, capture_output=True)
    cache = work / "cache/walks/train/robot_meta"

    t = time.perf_counter()
    _, rep = norm_stats(cache, args.horizon)
    cached_s = time.perf_counter() - t

    src = make_source("lerobot", work / "ds")
    t = time.perf_counter()
    for ep in src.episodes("train"):
        n = ep.record["length"]
        for key in src.cameras:
            src.read_camera(ep, key, range(n))
        src.read_table(ep)
    decode_s = time.perf_counter() - t + cached_s  # decoding, then the same statistics
    load = check_load(args.allow_load)
    record("norm_stats", {"frames": rep.frames, "episodes": info["episodes"], "codec": info["codec"], "horizon": args.horizon,
                          "cache_records_per_s": rep.frames / cached_s, "decode_records_per_s": rep.frames / decode_s,
                          "speedup": decode_s / cached_s, "load": load})


if __name__ == "__main__":
    main()
