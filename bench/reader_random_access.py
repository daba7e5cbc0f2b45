"""``open_cache`` reads against a numpy memmap of the same bytes: random episodes, random batches, sequential.

Caches are written with the project's writer (``write_part`` + ``finalize_cache``, the default
``chunk_rows`` 64 and part size 32 episodes) with the arrays of a DINOv3 ViT-L ``frame_features``
cache: ``cls`` [1024] + ``patch_pooled`` [4, 4, 1024] float16 + ``frame_index`` int64 + ``padded``
bool (34,825 bytes a row), 8 frames an episode; values are standard normals in float16 (so zstd and
gzip compress them as they do real features, by under 10%). The baseline is one ``.npy`` per array
holding the same rows, opened with ``np.load(mmap_mode="r")``. Page cache warm on both sides
(every file is read once before timing); 4,096 episodes (1.1 GB a backend) by default, far more
than any CPU cache or per-object cache.

Workloads, each timed side by side in alternating rounds (median of ``--rounds``), all arrays:

* random episode:  ``c[i]`` for random positions i  vs  ``np.array(mm[s:s+8])`` per array;
* random batch:    ``c.read(ids)`` for 32 random episodes  vs  ``mm[rows]`` (one fancy-index gather per array);
* sequential:      ``c.read(range(i, i+32))`` over every episode in storage order  vs  ``np.array(mm[s:e])``;
* open:            ``open_cache`` + first episode read + ``check()`` of every part, on a 128-part cache.

Targets (the uncompressed backends ``zarr-raw`` and ``hdf5-raw``): random episodes and random
batches >= 0.3x the memmap, sequential >= 0.8x, open < 0.5 s. ``--compressed`` adds ``zarr`` (zstd)
and ``hdf5`` (gzip) without targets: their reads are bound by the decoder, whose own speed on
the same chunks is printed beside them. Exit status 1 when a target is missed, 3 when the machine
was loaded (``bench.common.check_load``; ``--allow-load`` reports anyway).

    python -m bench.reader_random_access [--episodes 4096] [--rounds 5] [--compressed] [--allow-load] [--keep]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import OUT, check_load, record

D, G, F, PART_EPS, CHUNK = 1024, 4, 8, 32, 64
TARGETS = {"episode": 0.3, "batch": 0.3, "sequential": 0.8}
OPEN_TARGET_S = 0.5


def spec():
    from navcache.cache_specs.spec import ArraySpec, CacheSpec

    return CacheSpec("bench_frame_features", 1, "frame", (ArraySpec("cls", "float16", (D,)), ArraySpec("patch_pooled", "float16", (G, G, D)),
                                                          ArraySpec("frame_index", "int64", ()), ArraySpec("padded", "bool", ())))


def build(cache: Path, backend: str, episodes: int) -> Path:
    """A finalised cache of ``episodes`` episodes, ``PART_EPS`` a part (seeded: every backend holds the same values)."""
    from navcache.cache_specs.layout import PARTS, part_id
    from navcache.cache_specs.manifest import finalize_cache
    from navcache.cache_specs.parts import EpisodeResult, write_part

    if (cache / "manifest.json").exists():  # a kept cache (--keep) of this size is reused; of another size, rebuilt
        from navcache.cache_specs.manifest import read_manifest

        if read_manifest(cache)["counts"]["ok"] == episodes:
            return cache
    shutil.rmtree(cache, ignore_errors=True)
    rng = np.random.default_rng(0)
    expected = {}
    for p, first in enumerate(range(0, episodes, PART_EPS)):
        n = min(PART_EPS, episodes - first)
        x = rng.standard_normal((n, F, D + G * G * D), dtype=np.float32).astype(np.float16)
        res = [EpisodeResult(f"ep{first + k:07d}", {"cls": x[k, :, :D], "patch_pooled": x[k, :, D:].reshape(F, G, G, D),
                                                    "frame_index": np.arange(F, dtype=np.int64), "padded": np.zeros(F, bool)}) for k in range(n)]
        write_part(cache / PARTS, part_id(p), f"fp{p}", spec(), {}, res, backend=backend, chunk_rows=CHUNK)
        expected[part_id(p)] = f"fp{p}"
    finalize_cache(cache, expected, {"stage": "bench", "backend": backend})
    return cache


def memmaps(reader, folder: Path) -> dict[str, np.ndarray]:
    """The cache's arrays as ``.npy`` files (written once), memory-mapped, pages read once."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in reader.array_names:
        path = folder / f"{name}.npy"
        if not path.exists():
            np.save(path, reader.load(name))
        out[name] = np.load(path, mmap_mode="r")
        np.asarray(out[name]).sum()  # warm: every page read once
    return out


def workloads(reader, mm: dict[str, np.ndarray], seed: int, n_random: int, batch: int):
    """{workload: (cache side, memmap side, episodes read)}, each side a no-argument callable."""
    start, length = reader.offsets()
    n_eps = len(reader)
    rng = np.random.default_rng(seed)
    eps = rng.integers(0, n_eps, n_random)
    batches = [rng.integers(0, n_eps, batch) for _ in range(max(1, n_random // batch))]
    batch_rows = [np.concatenate([np.arange(start[i], start[i] + length[i]) for i in b]) for b in batches]
    blocks = [np.arange(i, min(i + batch, n_eps)) for i in range(0, n_eps, batch)]

    def cache_episode():
        for i in eps.tolist():
            reader[i]

    def mm_episode():
        for i in eps.tolist():
            s, n = int(start[i]), int(length[i])
            {k: np.array(v[s : s + n]) for k, v in mm.items()}

    def cache_batch():
        for b in batches:
            reader.read(b)

    def mm_batch():
        for rows in batch_rows:
            {k: v[rows] for k, v in mm.items()}

    def cache_seq():
        for b in blocks:
            reader.read(b)

    def mm_seq():
        for b in blocks:
            s, e = int(start[b[0]]), int(start[b[-1]] + length[b[-1]])
            {k: np.array(v[s:e]) for k, v in mm.items()}

    return {"episode": (cache_episode, mm_episode, len(eps)), "batch": (cache_batch, mm_batch, len(batches) * batch),
            "sequential": (cache_seq, mm_seq, n_eps)}


def check_equal(reader, mm: dict[str, np.ndarray], seed: int) -> None:
    """Both sides return the same arrays (a random batch, and one episode)."""
    start, length = reader.offsets()
    ids = np.random.default_rng(seed + 1).integers(0, len(reader), 32)
    got = reader.read(ids)
    rows = np.concatenate([np.arange(start[i], start[i] + length[i]) for i in ids])
    for k, v in mm.items():
        np.testing.assert_array_equal(got[k], v[rows])
        np.testing.assert_array_equal(reader[int(ids[0])][k], v[start[ids[0]] : start[ids[0]] + length[ids[0]]])


def time_open(cache: Path) -> dict:
    """Seconds to open the cache and read its first episode, and to ``check()`` every part (best of 5)."""
    from navcache.cache_specs import open_cache

    first, check = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        c = open_cache(cache)
        c[0]
        t1 = time.perf_counter()
        c.check()
        t2 = time.perf_counter()
        c.close()
        first.append(t1 - t0)
        check.append(t2 - t1)
    return {"open_first_read_s": round(min(first), 4), "check_all_parts_s": round(min(check), 4)}


def decoder_bound(reader) -> float | None:
    """Episodes/s the chunk decoder alone allows on one core (``patch_pooled``'s first part's
    stored chunks, decoded in memory), or None for uncompressed chunks."""
    import os
    import zlib

    import h5py

    part = reader._ok_rows["parts"][0]
    pdir = reader.path / "parts" / part
    if (pdir / "data.h5").exists():
        with h5py.File(pdir / "data.h5", "r") as f:
            d = f["patch_pooled"]
            if d.compression is None:
                return None
            chunks = [d.id.read_direct_chunk((r,) + (0,) * (d.ndim - 1))[1] for r in range(0, d.shape[0], d.chunks[0])]
            t = time.perf_counter()
            for c in chunks:
                zlib.decompress(c)  # gzip without the shuffle filter: a lower bound on HDF5's work
            dt = time.perf_counter() - t
            return len(chunks) * d.chunks[0] / F / dt
    from numcodecs.zstd import Zstd
    from navcache.cache_specs.backends.zarr_direct import ShardLayout

    data = reader.open_part(part)
    try:
        lay = ShardLayout.of(pdir / "data.zarr", "patch_pooled", data._data.metadata("patch_pooled"))
        if lay is None or not lay.zstd:
            return None
        fd = os.open(lay._shard_file(0), os.O_RDONLY)
        index = lay._shard_index(0, fd)
        raws = [os.pread(fd, int(n) - 4, int(o)) for o, n in index]
        os.close(fd)
    finally:
        data.close()
    z, t = Zstd(), time.perf_counter()
    for r in raws:
        z.decode(r)
    dt = time.perf_counter() - t
    return len(raws) * lay.chunk_rows / F / dt


def measure(backend: str, a, root: Path) -> dict:
    from navcache.cache_specs import open_cache

    t = time.perf_counter()
    cache = build(root / backend, backend, a.episodes)
    built = time.perf_counter() - t
    reader = open_cache(cache)
    mm = memmaps(reader, root / f"memmap-{len(reader)}")
    check_equal(reader, mm, a.seed)
    work = workloads(reader, mm, a.seed, a.random, a.batch)
    for c, m, _ in work.values():  # warm: every page of the cache read once, handles opened
        c(), m()
    res: dict = {"backend": backend, "episodes": len(reader), "parts": reader.manifest["counts"]["parts"], "build_s": round(built, 1),
                 "chunk_rows": {n: reader.chunk_rows(n, reader._ok_rows["parts"][0]) for n in reader.array_names}}
    for name, (cache_side, mm_side, n) in work.items():
        ratios, tc, tm = [], [], []
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            cache_side()
            t1 = time.perf_counter()
            mm_side()
            t2 = time.perf_counter()
            tc.append(t1 - t0)
            tm.append(t2 - t1)
            ratios.append((t2 - t1) / (t1 - t0))
        res[name] = {"cache_eps_per_s": round(n / statistics.median(tc), 1), "memmap_eps_per_s": round(n / statistics.median(tm), 1),
                     "ratio_median": round(statistics.median(ratios), 3), "ratio_per_round": [round(r, 3) for r in ratios]}
    reader.close()
    res["decoder_alone_eps_per_s"] = decoder_bound(open_cache(cache))
    res["checksum_alone_eps_per_s"] = checksum_bound(mm)
    res["hdf5_call_floor_eps_per_s"] = hdf5_call_floor(cache, list(mm))
    return res


def hdf5_call_floor(cache: Path, names: list[str]) -> float | None:
    """Episodes/s if an episode cost nothing but one minimal HDF5 read (one row) per array: the
    library's own per-call cost (selection, chunk lookup, filter pipeline), None for zarr."""
    import h5py

    path = cache / "parts" / "part-00000" / "data.h5"
    if not path.exists():
        return None
    with h5py.File(path, "r") as f:
        ds = [f[n] for n in names]
        outs = [np.empty((1,) + d.shape[1:], d.dtype) for d in ds]
        spaces = [h5py.h5s.create_simple(o.shape) for o in outs]
        t, n = time.perf_counter(), 2000
        for i in range(n):
            for d, o, m in zip(ds, outs, spaces):
                fs = d.id.get_space()
                fs.select_hyperslab((i % d.shape[0],) + (0,) * (d.ndim - 1), o.shape)
                d.id.read(m, fs, o)
        return round(n / (time.perf_counter() - t), 1)


def checksum_bound(mm: dict[str, np.ndarray]) -> float:
    """Episodes/s of crc32c alone over an episode's bytes held in memory (every array): what
    verifying each read's stored checksum costs, with no I/O and no reader around it."""
    import google_crc32c

    ep = [np.ascontiguousarray(v[: F]) for v in mm.values()]
    t, n = time.perf_counter(), 2000
    for _ in range(n):
        for a in ep:
            google_crc32c.value(a)
    return round(n / (time.perf_counter() - t), 1)


def build_open_cache(root: Path, backend: str, parts: int) -> Path:
    """A ``parts``-part cache for the open timing (the random-access cache when it has as many)."""
    return build(root / f"{backend}-open", backend, parts * PART_EPS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--random", type=int, default=2048, help="random episode reads per round (and random batches x batch size)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--open-parts", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compressed", action="store_true", help="also zarr (zstd) and hdf5 (gzip), reported without targets")
    ap.add_argument("--allow-load", action="store_true", help="report even when the machine is loaded (the load is printed)")
    ap.add_argument("--keep", action="store_true", help="keep the caches under bench/out/reader_random_access")
    a = ap.parse_args()
    load_before = check_load(a.allow_load)
    root = OUT / "reader_random_access"
    targeted = ["zarr-raw", "hdf5-raw"]
    backends = targeted + (["zarr", "hdf5"] if a.compressed else [])
    results, missed = {}, []
    try:
        for be in backends:
            results[be] = measure(be, a, root)
            if be in targeted:
                oc = root / be if a.episodes == a.open_parts * PART_EPS else build_open_cache(root, be, a.open_parts)
                results[be]["open"] = {"parts": a.open_parts, **time_open(oc)}
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    load_after = check_load(a.allow_load)
    print(f"\nopen_cache vs memmap of the same bytes, {a.episodes} episodes x {F} frames x 34,825 B, warm page cache, median of {a.rounds} rounds")
    print(f"{'backend':10} {'workload':11} {'cache eps/s':>12} {'memmap eps/s':>13} {'ratio':>7} {'target':>7}")
    for be, r in results.items():
        for w in TARGETS:
            t = TARGETS[w] if be in targeted else None
            ok = t is None or r[w]["ratio_median"] >= t
            if not ok:
                missed.append(f"{be} {w} {r[w]['ratio_median']} < {t}")
            print(f"{be:10} {w:11} {r[w]['cache_eps_per_s']:12.0f} {r[w]['memmap_eps_per_s']:13.0f} {r[w]['ratio_median']:7.3f} "
                  f"{'>= ' + str(t) if t else '-':>7}{'' if ok else '  MISSED'}")
        print(f"{be:10} (crc32c alone over each episode's bytes in memory: {r['checksum_alone_eps_per_s']:.0f} episodes/s, "
              f"{r['checksum_alone_eps_per_s'] / r['episode']['memmap_eps_per_s']:.2f}x the memmap's random episode reads)")
        if r.get("hdf5_call_floor_eps_per_s"):
            print(f"{be:10} (one one-row HDF5 read per array alone: {r['hdf5_call_floor_eps_per_s']:.0f} episodes/s, "
                  f"{r['hdf5_call_floor_eps_per_s'] / r['episode']['memmap_eps_per_s']:.2f}x the memmap's random episode reads)")
        if r.get("decoder_alone_eps_per_s"):
            print(f"{be:10} (its chunk decoder alone, one core: {r['decoder_alone_eps_per_s']:.0f} episodes/s of patch_pooled)")
        if "open" in r:
            o = r["open"]
            ok = o["open_first_read_s"] < OPEN_TARGET_S
            if not ok:
                missed.append(f"{be} open {o['open_first_read_s']} s")
            print(f"{be:10} open {o['parts']}-part cache + first read {o['open_first_read_s']:.3f} s (target < {OPEN_TARGET_S} s)"
                  f"{'' if ok else '  MISSED'}; check() of every part {o['check_all_parts_s']:.3f} s")
    record("reader_random_access", {"results": results, "load_before": load_before, "load_after": load_after, "missed": missed,
                                    "targets": {**TARGETS, "open_s": OPEN_TARGET_S}})
    if missed:
        print("targets missed: " + "; ".join(missed), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
