"""Peak memory of the SIM heads' ``load_split`` against what it keeps, at 4x and 16x the demo's size.

Caches are written with the project's writer (``write_part`` + ``finalize_cache``, part size 32
clips, default chunking) in the real ``frame_features`` and ``rover_meta`` specs: the demo rover
train split's 240 clips x 8 frames scaled by ``--scales``, features of a ViT-S-sized encoder
(``--dim`` 384; the demo's tiny encoder has 48, which would leave every figure inside the
allocator's noise), pool grid 4 x 4, float16 as the pipeline stores them.

Each measurement runs in a fresh Python process: imports and ``open_cache`` first, and in a "warm"
process one ``load_split`` of a one-part cache (first-use costs whatever the data: polars' thread
pool ~23 MiB, codec set-up, ~30 MiB in all; a trainer pays them once, then loads train and val);
then the peak resident set is reset to the current one (``/proc/self/clear_refs`` 5),
``load_split`` runs, and the peak growth (``VmHWM`` after - ``VmRSS`` before) is compared with the
bytes it must hold: the result it returns plus the largest part's float16 rows. Three processes:
  warm      as above
  resident  the first ``load_split`` of the process, with every loaded library's pages made
            resident before the baseline (``madvise(MADV_POPULATE_READ)``, Linux >= 5.14): the
            peak counts what ``load_split`` allocates (its first-use allocations included)
  cold      the first ``load_split`` of the process as it is: ``VmHWM`` also counts the library
            code pages its first use faults in (~23 MiB of polars' code at the first index query:
            file-backed, clean, shared with every process using them, reclaimable), printed
            beside it as the ``RssFile`` growth
Target: peak growth <= 1.3x (result + largest part) in the warm and resident processes.
``--before REV`` also measures ``load_split`` as it was at git revision REV, side by side.

    python -m bench.sim_load_memory [--scales 4 16] [--dim 384] [--before REV] [--allow-load] [--keep]
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.common import OUT, check_load, record

DEMO_TRAIN_CLIPS, F, G, PART = 240, 8, 4, 32
TARGET = 1.3
DATASET, SPLIT = "bench_rover", "train"

CHILD = r"""
import json, sys, importlib.util
from pathlib import Path
root, module, mode = sys.argv[1], sys.argv[2], sys.argv[3]
warm = mode == "warm"
if module == "current":
    from navcache.heads.sim_heads.data import load_split
else:  # an older data.py, loaded from a file
    spec = importlib.util.spec_from_file_location("navcache.heads.sim_heads._old_data", module)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); load_split = mod.load_split
import numpy, torch, polars, zarr  # imported before the baseline is taken
from navcache.cache_specs import open_cache
if warm:  # first-use costs (polars' thread pool, codec set-up) paid on a one-part cache
    load_split(root, "bench_rover_warm", "train")
def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
if mode == "resident":  # every loaded library's pages faulted in now (MADV_POPULATE_READ), so that
    import ctypes       # the peak counts what load_split allocates, not code pages its first use runs
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for line in Path("/proc/self/maps").read_text().splitlines():
        f = line.split()
        if len(f) >= 6 and f[5].startswith("/") and f[1].startswith("r") and "w" not in f[1]:
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            if libc.madvise(lo, hi - lo, 22) != 0:  # 22: MADV_POPULATE_READ, Linux >= 5.14
                raise SystemExit(f"MADV_POPULATE_READ failed (errno {ctypes.get_errno()}): kernel older than 5.14?")
Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
before, file_before = status("VmRSS"), status("RssFile")
arrays, info = load_split(root, "bench_rover", "train")
peak, file_after = status("VmHWM"), status("RssFile")
kept = sum(v.numel() * v.element_size() for v in arrays.values())
print(json.dumps({"before": before, "peak": peak, "kept": kept, "n": info["n"], "file_growth": file_after - file_before}))
"""


def build(root: Path, clips: int, dim: int, dataset: str = DATASET) -> tuple[int, int]:
    """Both caches of ``clips`` clips; returns (feature bytes on the row axis, largest part's feature bytes)."""
    from navcache.cache_specs.layout import PARTS, cache_dir, part_id
    from navcache.cache_specs.manifest import finalize_cache
    from navcache.cache_specs.parts import EpisodeResult, write_part
    from navcache.cache_specs.specs import get_spec

    rng = np.random.default_rng(0)
    ff, meta = get_spec("frame_features"), get_spec("rover_meta")
    row = 2 * (dim + G * G * dim) + 8 + 1
    dirs = {s: cache_dir(root, dataset, SPLIT, s) for s in ("frame_features", "rover_meta")}
    expected: dict = {s: {} for s in dirs}
    for p, first in enumerate(range(0, clips, PART)):
        n = min(PART, clips - first)
        x = rng.standard_normal((n, F, dim + G * G * dim), dtype=np.float32).astype(np.float16)
        ids = [f"clip{first + k:06d}" for k in range(n)]
        feats = [EpisodeResult(e, {"cls": x[k, :, :dim], "patch_pooled": x[k, :, dim:].reshape(F, G, G, dim),
                                   "frame_index": np.arange(F, dtype=np.int64), "padded": np.zeros(F, bool)}) for k, e in enumerate(ids)]
        metas = [EpisodeResult(e, {"telemetry": rng.standard_normal(8).astype(np.float32), "risk": np.int64(k % 4), "reason": np.int64(k % 3),
                                   "action": np.int64(k % 6), "weight": np.float32(1)}) for k, e in enumerate(ids)]
        for s, spec, res in (("frame_features", ff, feats), ("rover_meta", meta, metas)):
            dims = {"D": dim, "G": G} if s == "frame_features" else {}
            write_part(dirs[s] / PARTS, part_id(p), f"fp{p}", spec, dims, res, chunk_rows=64)
            expected[s][part_id(p)] = f"fp{p}"
    for s, d in dirs.items():
        finalize_cache(d, expected[s], {"stage": "bench", "backend": "zarr"})
    return clips * F * row, min(PART, clips) * F * row


#: how the process stands when ``load_split`` starts (see the module docstring); the target holds for the first two
MODES = ("warm", "resident", "cold")


def measure(root: Path, module: str, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(root), module, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", type=float, nargs="+", default=[4, 16])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--before", default=None, help="git revision whose load_split is measured too")
    ap.add_argument("--allow-load", action="store_true")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    load_before = check_load(a.allow_load)
    work = OUT / "sim_load_memory"
    old = None
    if a.before:
        src = subprocess.run(["git", "show", f"{a.before}:heads/sim_heads/data.py"], capture_output=True, text=True, check=True).stdout
        old = Path(tempfile.mkdtemp()) / "old_data.py"
        old.write_text(src)
    rows, missed = [], []
    try:
        for scale in a.scales:
            clips = math.ceil(DEMO_TRAIN_CLIPS * scale)
            root = work / f"x{scale:g}"
            shutil.rmtree(root, ignore_errors=True)
            feat_bytes, part_bytes = build(root, clips, a.dim)
            build(root, PART, a.dim, "bench_rover_warm")
            for label, module in (("current", "current"),) + ((("before " + a.before, str(old)),) if old else ()):
                for mode in MODES:
                    m = measure(root, module, mode)
                    grow = m["peak"] - m["before"]
                    budget = m["kept"] + part_bytes
                    r = {"scale": scale, "clips": clips, "code": label, "process": mode, "feature_bytes": feat_bytes, "kept_bytes": m["kept"],
                         "largest_part_bytes": part_bytes, "peak_growth_bytes": grow, "file_pages_growth_bytes": m["file_growth"],
                         "ratio_to_kept_plus_part": round(grow / budget, 3), "ratio_to_feature_bytes": round(grow / feat_bytes, 3)}
                    rows.append(r)
                    if label == "current" and mode != "cold" and r["ratio_to_kept_plus_part"] > TARGET:
                        missed.append(f"x{scale:g} {mode}: {r['ratio_to_kept_plus_part']}")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    load_after = check_load(a.allow_load)
    mib = lambda b: b / 2**20  # noqa: E731
    print(f"\nSIM load_split peak RSS growth, D={a.dim}, {F} frames, {G}x{G} grid, parts of {PART} clips (fresh process each)")
    print(f"{'scale':>5} {'clips':>6} {'code':>14} {'process':>9} {'features MiB':>13} {'kept MiB':>9} {'part MiB':>9} {'peak MiB':>9} {'code pages MiB':>15} {'peak/(kept+part)':>17} {'peak/features':>14}")
    for r in rows:
        print(f"{r['scale']:5g} {r['clips']:6d} {r['code']:>14} {r['process']:>9} {mib(r['feature_bytes']):13.1f} {mib(r['kept_bytes']):9.1f} {mib(r['largest_part_bytes']):9.1f} "
              f"{mib(r['peak_growth_bytes']):9.1f} {mib(r['file_pages_growth_bytes']):15.1f} {r['ratio_to_kept_plus_part']:17.3f} {r['ratio_to_feature_bytes']:14.3f}")
    print(f"target: peak growth <= {TARGET}x (result + largest part) in a warm process and in a cold one with its libraries' code resident"
          " (cold: the first load_split of a process as it is, library code pages its first use faults in included)")
    record("sim_load_memory", {"rows": rows, "dim": a.dim, "load_before": load_before, "load_after": load_after, "missed": missed, "target": TARGET})
    if missed:
        print("target missed: " + "; ".join(missed), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
