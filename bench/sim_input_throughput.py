"""SIM heads input throughput: the trainer's data path from the caches vs tensors already in memory.

"cache" is what ``heads.sim_heads.train.build_task`` does to get the train arrays -- ``load_split``
(open the ``frame_features`` cache, load ``cls`` + ``patch_pooled``, pool the grid, concat; open the
``rover_meta`` cache, load telemetry / risk / reason / action / weight, join by episode id) plus the
telemetry normalisation with the train stats -- followed by the epochs of ``heads.train_loop.run_loop``'s
batching (per-epoch ``torch.randperm`` with the loop's seed, ``tensor[idx].to(device)`` per array per
batch). "memory" is the same epochs over the same arrays held as torch tensors before the clock starts.
Same batch size, seed and permutations on both sides; the batches are checked to be equal.

Rounds alternate A (cache) / B (memory) / A / B ...; each round gives one ratio cache / memory in
samples/s, and the median over rounds is reported, both

  steady state: the batches/s once the arrays are loaded (the per-epoch input path), and
  amortised:    the one-time cache load spread over ``--epochs`` epochs (default: the SIM heads
                config's default ``loop.epochs``).

Page cache is warm after the first round (the caches are a few MB), so "load" is decode + assemble,
not disk. The val split is loaded by ``build_task`` too but never batched; its load time is reported
separately (and folded into a second amortised figure).

    python -m bench.sim_input_throughput [--scale 1] [--epochs 40] [--batch-size 32] [--rounds 21]
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch

from bench.common import demo_project, record
from navcache.heads.sim_heads.data import load_split, normalise_telemetry


def epochs_loop(arrays: dict[str, torch.Tensor], epochs: int, batch_size: int, seed: int, device: torch.device, check=None) -> int:
    """``run_loop``'s batching, world_size 1: the per-epoch shuffle and ``v[idx].to(device)`` gather."""
    n = len(next(iter(arrays.values())))
    seen = 0
    for epoch in range(1, epochs + 1):
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            batch = {k: v[idx].to(device, non_blocking=True) for k, v in arrays.items()}
            if check is not None:
                check(epoch, i, batch)
            seen += len(idx)
    return seen


def load_train_arrays(cache_root, dataset: str, split: str) -> dict[str, torch.Tensor]:
    """The train arrays exactly as ``build_task`` hands them to the loop."""
    arrays, info = load_split(cache_root, dataset, split)
    arrays["telemetry"] = normalise_telemetry(arrays["telemetry"], info["telemetry_stats"])
    return arrays


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="demo world scale (1.0: 240 train / 80 val clips)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs the load is amortised over (default: SIM heads default loop.epochs)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: SIM heads default loop.batch_size")
    ap.add_argument("--rounds", type=int, default=21, help="A/B rounds (median reported)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()

    from navcache.heads.sim_heads import SimHeadsConfig
    from navcache.pipeline.config import load_config as load_project
    from navcache.pipeline.runner import ExtractOptions, extract

    defaults = SimHeadsConfig()
    epochs = a.epochs or defaults.loop.epochs
    bs = a.batch_size or defaults.loop.batch_size
    seed = defaults.loop.seed
    dataset, (train_split, val_split) = defaults.dataset, defaults.splits
    torch.set_num_threads(a.threads)
    device = torch.device("cpu")

    project = load_project(demo_project(f"sim_input_s{a.scale:g}", a.scale, "tiny", datasets=("demo_rover",), stages=("frame-features", "rover-meta")))
    for split in (train_split, val_split):
        assert not extract(project, ExtractOptions(split)).errors
    root = project.cache_root

    # B's arrays: built once, before any clock, then copied so they share no storage with a cache load
    ref = load_train_arrays(root, dataset, train_split)
    memory = {k: v.clone() for k, v in ref.items()}
    n = len(memory["risk"])

    # correctness: same arrays, same batches (first and last epoch of a short run)
    loaded = load_train_arrays(root, dataset, train_split)
    assert loaded.keys() == memory.keys() and all(torch.equal(loaded[k], memory[k]) for k in memory)
    seen_batches: dict = {}

    def same_batch(e, i, b) -> None:
        assert all(torch.equal(b[k], seen_batches[(e, i)][k]) for k in b), f"batch {(e, i)} differs"

    epochs_loop(memory, 2, bs, seed, device, check=lambda e, i, b: seen_batches.__setitem__((e, i), b))
    epochs_loop(loaded, 2, bs, seed, device, check=same_batch)
    assert len(seen_batches) == 2 * -(-n // bs)
    epochs_loop(memory, 3, bs, seed, device)  # warm-up
    load_train_arrays(root, dataset, train_split)

    t_load, t_cache_batches, t_mem, t_val = [], [], [], []
    for _ in range(a.rounds):
        gc.collect()  # start every round from the same heap state; gc stays enabled, as in training
        # A: cache -> tensors -> epochs
        t0 = time.perf_counter()
        arrays = load_train_arrays(root, dataset, train_split)
        t1 = time.perf_counter()
        n_c = epochs_loop(arrays, epochs, bs, seed, device)
        t2 = time.perf_counter()
        # B: tensors already in memory -> epochs
        n_m = epochs_loop(memory, epochs, bs, seed, device)
        t3 = time.perf_counter()
        assert n_c == n_m == epochs * n
        t_load.append(t1 - t0)
        t_cache_batches.append(t2 - t1)
        t_mem.append(t3 - t2)
        # val split load (build_task does it once; not batched): timed outside the A/B pair
        t4 = time.perf_counter()
        load_split(root, dataset, val_split)
        t_val.append(time.perf_counter() - t4)
        del arrays

    steady = [m / c for c, m in zip(t_cache_batches, t_mem)]  # samples/s ratio = time ratio inverted
    amort = [m / (l + c) for l, c, m in zip(t_load, t_cache_batches, t_mem)]
    amort_val = [m / (l + v + c) for l, v, c, m in zip(t_load, t_val, t_cache_batches, t_mem)]
    med = statistics.median
    per_epoch_mem = med(t_mem) / epochs
    epochs_for_08 = 4 * med(t_load) / per_epoch_mem  # load <= 0.25 x batching time <=> amortised ratio >= 0.8
    samples = epochs * n
    res = {
        "dataset": dataset, "split": train_split, "scale": a.scale, "n_train": n, "batch_size": bs, "epochs_amortised": epochs,
        "rounds": a.rounds, "threads": a.threads,
        "arrays": {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in memory.items()},
        "cache_load_ms_median": round(med(t_load) * 1e3, 2),
        "val_load_ms_median": round(med(t_val) * 1e3, 2),
        "memory_samples_per_s": round(samples / med(t_mem), 1),
        "cache_steady_samples_per_s": round(samples / med(t_cache_batches), 1),
        "cache_amortised_samples_per_s": round(samples / med([l + c for l, c in zip(t_load, t_cache_batches)]), 1),
        "memory_batches_per_s": round(epochs * -(-n // bs) / med(t_mem), 1),
        "ratio_steady_median": round(med(steady), 3),
        "ratio_amortised_median": round(med(amort), 3),
        "ratio_amortised_with_val_load_median": round(med(amort_val), 3),
        "ratio_steady_per_round": [round(x, 3) for x in steady],
        "ratio_amortised_per_round": [round(x, 3) for x in amort],
        "epochs_needed_for_0.8_amortised": round(epochs_for_08, 1),
        "target": 0.8,
    }
    print(f"SIM heads input path {dataset}/{train_split}: {n} clips, batch {bs}, {epochs} epochs per round, {a.rounds} A/B rounds (median)")
    print(f"  memory: tensors already in memory          {res['memory_samples_per_s']:12.0f} samples/s")
    print(f"  cache, steady state (batches once loaded)  {res['cache_steady_samples_per_s']:12.0f} samples/s")
    print(f"  cache, load {res['cache_load_ms_median']:6.1f} ms + {epochs} epochs         {res['cache_amortised_samples_per_s']:12.0f} samples/s"
          f"   (val split load {res['val_load_ms_median']:.1f} ms, never batched)")
    print(f"  ratio cache/memory, steady state           {res['ratio_steady_median']:.3f}  (target >= 0.8)")
    print(f"  ratio cache/memory, load amortised over {epochs} epochs: {res['ratio_amortised_median']:.3f}"
          f"  (>= 0.8 after ~{epochs_for_08:.0f} epochs; counting the val load too: {res['ratio_amortised_with_val_load_median']:.3f})")
    record("sim_input_throughput", res)


if __name__ == "__main__":
    main()
