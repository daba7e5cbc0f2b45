"""gru-motion input pipeline throughput: the trainer's data path from the cache vs tensors already in memory.

Both sides run the same epoch loop as ``heads.train_loop`` (torch.randperm shuffle, ``tensor[idx]``
per array per batch), same batch size and seed. "cache" includes opening the poses cache and
``open_cache(...).load`` of each array into torch tensors (what ``heads.gru_motion.data`` does)
amortised over the epochs; "memory" starts from tensors that already exist. Ratio = cache / memory,
printed both in steady state (the per-batch path) and with the one-time load amortised.

    python bench/gru_input_throughput.py [--cache-root navcache_cache] [--epochs 200] [--batch-size 16]
"""
from __future__ import annotations

import argparse
import time

import torch

from navcache.heads.gru_motion.data import ARRAYS, load_poses_split


def epochs_loop(arrays: dict[str, torch.Tensor], epochs: int, batch_size: int, seed: int = 0) -> int:
    n = len(next(iter(arrays.values())))
    seen = 0
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            batch = {k: v[idx] for k, v in arrays.items()}
            seen += len(batch["step_valid"])
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-root", default="navcache_cache")
    ap.add_argument("--dataset", default="demo_navila")
    ap.add_argument("--split", default="train")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    from navcache.pipeline.ensure import ensure_caches
    from navcache.pipeline.project import demo_project

    project = demo_project(a.cache_root)  # the embedded demo's caches: built when missing
    if project is not None:
        ensure_caches(project, [(a.dataset, a.split, "poses")])
    torch.set_num_threads(1)

    ref, _ = load_poses_split(a.cache_root, a.dataset, a.split)
    memory = {k: v.clone() for k, v in ref.items()}
    epochs_loop(memory, 2, a.batch_size)  # warm-up

    t_cache, t_mem, t_load = [], [], []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        arrays, _ = load_poses_split(a.cache_root, a.dataset, a.split)
        t1 = time.perf_counter()
        n_c = epochs_loop(arrays, a.epochs, a.batch_size)
        t2 = time.perf_counter()
        n_m = epochs_loop(memory, a.epochs, a.batch_size)
        t3 = time.perf_counter()
        assert n_c == n_m and all(torch.equal(arrays[k], memory[k]) for k in ARRAYS)
        t_load.append(t1 - t0)
        t_cache.append(t2 - t0)
        t_mem.append(t3 - t2)
    best_c, best_m = min(t_cache), min(t_mem)
    n = len(memory["step_valid"])
    print(f"poses {a.dataset}/{a.split}: {n} episodes, batch {a.batch_size}, {a.epochs} epochs x {a.repeats} repeats (best of)")
    print(f"  cache  (open_cache + load + epochs): {n_c / best_c:12.0f} samples/s  (load {min(t_load) * 1e3:.1f} ms)")
    print(f"  memory (tensors already in memory) : {n_m / best_m:12.0f} samples/s")
    steady = best_m / (best_c - min(t_load))
    per_epoch = best_m / a.epochs
    need = 4 * min(t_load) / per_epoch  # epochs after which load / total <= 0.2
    print(f"  ratio cache/memory, steady state (batches from the loaded cache tensors): {steady:.3f}  (target >= 0.8)")
    print(f"  ratio cache/memory, one-time load amortised over {a.epochs} epochs: {best_m / best_c:.3f}"
          f"  (>= 0.8 after ~{need:.0f} epochs of this size)")


if __name__ == "__main__":
    main()
