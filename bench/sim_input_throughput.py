"""SIM heads input throughput: the trainer's data path, cache reads included, vs the same samples from memmaps.

The baseline holds the very arrays the caches hold (``cls`` and ``patch_pooled`` float16 rows,
``rover_meta``'s arrays) as ``.npy`` files opened with ``np.load(mmap_mode="r")``, page cache warm
on both sides, and does the same work on them in plain numpy: the same pooling (concat(cls, mean of
the G x G grid) in float32), the same telemetry normalisation, the same batches. The two sides are
checked to give identical samples. Both of the trainer's data modes are measured:

* memory (``data_mode`` "memory", the demo's "auto" choice): A = ``load_split`` (open the two caches,
  join, read, pool, normalise) then ``--epochs`` epochs of ``run_loop``'s batching (per-epoch
  ``randperm`` with the loop's seed, ``v[idx]``); B = the same from the memmaps. Reported: the load
  alone, and the load plus the epochs (the batching is the same code on both sides, so the ratio
  over many epochs tends to 1 by construction; the load is where the caches cost).
* stream (``data_mode`` "stream", for splits larger than RAM): A = one epoch of ``stream_split``'s
  batches (the loader made once, as the trainer does) (``make_loader`` reading blocks from the caches, ``SimSample`` per clip, collation);
  B = the same clips in the same batches (the ids A yielded) gathered from the memmaps, put through
  the same ``SimSample`` and stacked.

Rounds alternate A / B; medians of the per-round ratios (samples/s of A over B). Target >= 0.8 for
both. Exit 1 when missed, 3 when the machine was loaded (``--allow-load`` reports anyway).

    python -m bench.sim_input_throughput [--scale 1] [--epochs 40] [--rounds 11] [--allow-load]
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

import numpy as np
import torch

from bench.common import OUT, check_load, demo_project, record
from navcache.heads.sim_heads.data import META, SimSample, load_split, normalise_telemetry, stream_split

TARGET = 0.8


def epochs_loop(arrays: dict[str, torch.Tensor], epochs: int, batch_size: int, seed: int) -> list:
    """``run_loop``'s batching over in-memory tensors, world size 1; returns the last batch (for checks)."""
    n = len(next(iter(arrays.values())))
    last = None
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            last = {k: v[idx] for k, v in arrays.items()}
    return last


class Memmaps:
    """The caches' arrays as memory-mapped ``.npy`` files, and the trainer's work done on them."""

    def __init__(self, root, dataset: str, split: str, folder):
        from navcache.cache_specs import open_cache
        from navcache.cache_specs.join import join_caches

        folder.mkdir(parents=True, exist_ok=True)
        with open_cache(root, dataset, split, "frame_features") as f, open_cache(root, dataset, split, "rover_meta") as m:
            join = join_caches({"feats": f, "meta": m})
            self.mm = {}
            for key, reader, names in (("feats", f, ("cls", "patch_pooled")), ("meta", m, META)):
                for n in names:
                    path = folder / f"{split}-{key}-{n}.npy"
                    np.save(path, reader.load(n))
                    self.mm[n] = np.load(path, mmap_mode="r")
                    np.asarray(self.mm[n]).sum()  # warm
            start, _ = f.offsets()
            fpos = {e: i for i, e in enumerate(f.episodes)}
            mpos = {e: i for i, e in enumerate(m.episodes)}
            self.F = int(join.slices["feats"].length[0])
            self.first = np.array([start[fpos[e]] for e in join.episodes], np.int64)  # [N] first frame row
            self.meta_row = np.array([mpos[e] for e in join.episodes], np.int64)
            self.pos = {e: i for i, e in enumerate(join.episodes)}
            self.stats = m.stats.get("telemetry")

    def load(self, stats: dict) -> dict[str, torch.Tensor]:
        """What ``load_split`` + ``normalise_telemetry`` return, from the memmaps."""
        rows = (self.first[:, None] + np.arange(self.F)[None, :]).reshape(-1)
        cls = self.mm["cls"][rows].astype(np.float32)
        pooled = self.mm["patch_pooled"][rows].mean(axis=(1, 2), dtype=np.float32)
        vis = np.concatenate([cls, pooled], axis=-1).reshape(len(self.first), self.F, -1)
        out = {"vis_feats": torch.from_numpy(vis), **{n: torch.from_numpy(self.mm[n][self.meta_row]) for n in META}}
        out["telemetry"] = normalise_telemetry(out["telemetry"], stats)
        return out

    def batches(self, id_batches: list[list[str]], transform: SimSample) -> list[dict]:
        """The stream loader's batches (same clips, same order) from the memmaps, through ``transform``."""
        out = []
        for ids in id_batches:
            samples = []
            for e in ids:
                i = self.pos[e]
                s = self.first[i]
                mr = self.meta_row[i]
                raw = {"feats.cls": np.asarray(self.mm["cls"][s : s + self.F]), "feats.patch_pooled": np.asarray(self.mm["patch_pooled"][s : s + self.F]),
                       **{f"meta.{n}": np.asarray(self.mm[n][mr]) for n in META}}
                samples.append(transform(raw))
            out.append({k: torch.from_numpy(np.stack([x[k] for x in samples])) for k in samples[0]})
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="demo world scale (1.0: 240 train clips)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs after the load, memory mode (default: SIM heads loop.epochs)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: SIM heads loop.batch_size")
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--allow-load", action="store_true", help="report even when the machine is loaded (the load is printed)")
    a = ap.parse_args()
    load_before = check_load(a.allow_load)

    from navcache.heads.sim_heads import SimHeadsConfig
    from navcache.pipeline.config import load_config as load_project
    from navcache.pipeline.runner import ExtractOptions, extract

    defaults = SimHeadsConfig()
    epochs, bs, seed = a.epochs or defaults.loop.epochs, a.batch_size or defaults.loop.batch_size, defaults.loop.seed
    dataset, split = defaults.dataset, defaults.splits[0]
    torch.set_num_threads(a.threads)
    project = load_project(demo_project(f"sim_input_s{a.scale:g}", a.scale, "tiny", datasets=("demo_rover",), stages=("frame-features", "rover-meta")))
    assert not extract(project, ExtractOptions(split)).errors
    root = project.cache_root
    mm = Memmaps(root, dataset, split, OUT / "sim_input_memmaps")
    stats = mm.stats

    def cache_load():
        arrays, _ = load_split(root, dataset, split)
        arrays["telemetry"] = normalise_telemetry(arrays["telemetry"], stats)
        return arrays

    # same samples on both sides
    A, B = cache_load(), mm.load(stats)
    assert A.keys() == B.keys() and all(torch.equal(A[k], B[k]) for k in A), "memory mode: the memmap side differs"
    n = len(A["risk"])
    transform = SimSample(stats)

    loader = stream_split(root, dataset, split, stats, batch_size=bs, seed=seed, mode="stream")  # once, as the trainer does

    def stream_epoch():
        loader.set_epoch(1)  # the same clips in the same order every round; blocks are read from disk each time
        return list(loader)

    first = stream_epoch()
    ids = [list(b["episode_id"]) for b in first]
    for got, want in zip(first, mm.batches(ids, transform)):
        assert all(torch.equal(got[k], want[k]) for k in want), "stream mode: the memmap side differs"

    t = {k: [] for k in ("load_c", "load_m", "ep_c", "ep_m", "st_c", "st_m")}
    for _ in range(a.rounds):
        gc.collect()
        t0 = time.perf_counter(); arrays = cache_load(); t1 = time.perf_counter()  # noqa: E702
        epochs_loop(arrays, epochs, bs, seed); t2 = time.perf_counter()  # noqa: E702
        marrays = mm.load(stats); t3 = time.perf_counter()  # noqa: E702
        epochs_loop(marrays, epochs, bs, seed); t4 = time.perf_counter()  # noqa: E702
        stream_epoch(); t5 = time.perf_counter()  # noqa: E702
        mm.batches(ids, transform); t6 = time.perf_counter()  # noqa: E702
        for k, v in zip(t, (t1 - t0, t3 - t2, t2 - t1, t4 - t3, t5 - t4, t6 - t5)):
            t[k].append(v)
        del arrays, marrays
    load_after = check_load(a.allow_load)
    med = statistics.median
    ratio_load = [m / c for c, m in zip(t["load_c"], t["load_m"])]
    ratio_run = [(lm + em) / (lc + ec) for lc, lm, ec, em in zip(t["load_c"], t["load_m"], t["ep_c"], t["ep_m"])]
    ratio_stream = [m / c for c, m in zip(t["st_c"], t["st_m"])]
    res = {
        "dataset": dataset, "split": split, "scale": a.scale, "n": n, "batch_size": bs, "epochs": epochs, "rounds": a.rounds, "threads": a.threads,
        "memory_load_ms": {"cache": round(med(t["load_c"]) * 1e3, 2), "memmap": round(med(t["load_m"]) * 1e3, 2)},
        "memory_epochs_ms": {"cache": round(med(t["ep_c"]) * 1e3, 2), "memmap": round(med(t["ep_m"]) * 1e3, 2)},
        "stream_epoch_ms": {"cache": round(med(t["st_c"]) * 1e3, 2), "memmap": round(med(t["st_m"]) * 1e3, 2)},
        "ratio_memory_load": round(med(ratio_load), 3), "ratio_memory_load_plus_epochs": round(med(ratio_run), 3),
        "ratio_stream_epoch": round(med(ratio_stream), 3), "target": TARGET, "load_before": load_before, "load_after": load_after,
    }
    print(f"\nSIM heads input path, {dataset}/{split}: {n} clips, batch {bs}, {a.rounds} alternating rounds (medians); ratio = samples/s cache / memmap")
    print(f"  memory mode, load_split:        cache {res['memory_load_ms']['cache']:8.1f} ms   memmap {res['memory_load_ms']['memmap']:8.1f} ms   ratio {res['ratio_memory_load']:.3f}")
    print(f"  memory mode, load + {epochs} epochs: cache {res['memory_load_ms']['cache'] + res['memory_epochs_ms']['cache']:8.1f} ms   "
          f"memmap {res['memory_load_ms']['memmap'] + res['memory_epochs_ms']['memmap']:8.1f} ms   ratio {res['ratio_memory_load_plus_epochs']:.3f}  (target >= {TARGET})")
    print(f"  stream mode, one epoch:         cache {res['stream_epoch_ms']['cache']:8.1f} ms   memmap {res['stream_epoch_ms']['memmap']:8.1f} ms   ratio {res['ratio_stream_epoch']:.3f}  (target >= {TARGET})")
    record("sim_input_throughput", res)
    missed = [k for k in ("ratio_memory_load_plus_epochs", "ratio_stream_epoch") if res[k] < TARGET]
    if missed:
        print("targets missed: " + ", ".join(missed), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
