"""The streaming / in-memory loader on real zarr and HDF5 caches (no mocks, no timing).

Every sample is checked against its episode id (the test caches encode (episode, frame) in their
values), so "the same batches" means the same data, not just the same ids.
"""
from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from navcache.cache_specs import LoaderConfig, make_loader, open_cache
from tests.cache_specs.stream_helpers import FEATS, eid, feats_of, kept_standard, meta_of, num, standard_pair, write_cache

ARRAYS = {"feats": ["x", "idx", "flag"], "meta": ["y", "t"]}


@pytest.fixture(scope="module", params=["zarr", "zarr-raw", "hdf5"])  # zarr-raw: the direct shard reads
def pair(request, tmp_path_factory):
    return standard_pair(tmp_path_factory.mktemp(request.param), request.param)


def loader(pair, **kw):
    feats, meta = pair
    kw = {"batch_size": 5, "seed": 3, "block_rows": 8, "shuffle_buffer": 16, **kw}
    return make_loader({"feats": feats, "meta": meta}, ARRAYS, **kw)


def check_batch(batch: dict, unit: str = "episode") -> None:
    """Every sample's arrays are those of its episode_id (and frame, for unit='row')."""
    ids = batch["episode_id"]
    assert all(len(v) == len(ids) for k, v in batch.items())
    for i, e in enumerate(ids):
        want = feats_of(num(e), 4)
        if unit == "row":
            want = {k: v[int(batch["frame"][i])] for k, v in want.items()}
        for k, v in want.items():
            np.testing.assert_array_equal(batch[f"feats.{k}"][i].numpy(), v)
        for k, v in meta_of(num(e)).items():
            np.testing.assert_array_equal(batch[f"meta.{k}"][i].numpy(), v)


def run(ld, check: bool = True, unit: str = "episode", whole: bool = True) -> list[dict]:
    out = []
    for b in ld:
        if check:
            check_batch(b, unit)
        out.append(b)
    assert len(out) == len(ld) or not whole
    return out


def ids(batches) -> list[str]:
    return [e for b in batches for e in b["episode_id"]]


def same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for k in x:
            if k == "episode_id":
                assert x[k] == y[k]
            else:
                assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_epoch_yields_every_kept_episode_once(pair, mode):
    ld = loader(pair, mode=mode)
    assert ld.modes == {"feats": mode, "meta": mode}
    assert ld.join_report.n_dropped == {"feats": 2, "meta": 3} and ld.join_report.quarantined == {"feats": 2, "meta": 1}
    assert sorted(ld.episodes) == sorted(kept_standard())
    got = ids(run(ld))
    assert sorted(got) == sorted(kept_standard())
    assert got != list(ld.episodes)  # shuffled
    assert len(ld) == -(-len(kept_standard()) // 5)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ranks_are_disjoint_equal_and_cover_all_but_the_dropped_tail(pair, world_size):
    n = len(kept_standard())
    per_rank = []
    for rank in range(world_size):
        ld = loader(pair, mode="stream", rank=rank, world_size=world_size, batch_size=4)
        ld.set_epoch(2)
        per_rank.append(ids(run(ld)))
        assert ld.num_samples == n // world_size and len(ld) == -(-(n // world_size) // 4)
    assert len({len(r) for r in per_rank}) == 1
    union = [e for r in per_rank for e in r]
    assert len(set(union)) == len(union) == (n // world_size) * world_size
    assert set(union) <= set(kept_standard())


def test_same_seed_and_epoch_same_order_other_epoch_or_seed_differs(pair):
    a, b = loader(pair), loader(pair)
    a.set_epoch(1)
    b.set_epoch(1)
    same_batches(run(a), run(b))
    one = ids(run(a))
    a.set_epoch(2)
    two = ids(run(a))
    c = loader(pair, seed=4)
    c.set_epoch(1)
    assert one != two and sorted(one) == sorted(two)
    assert ids(run(c)) != one


def test_workers_do_not_change_the_batches(pair):
    base = run(loader(pair, mode="stream", num_workers=0))
    same_batches(base, run(loader(pair, mode="stream", num_workers=2)))
    same_batches(base, run(loader(pair, mode="stream", num_workers=3, prefetch_factor=1)))


def test_memory_and_stream_give_the_same_batches(pair):
    for kw in ({}, {"unit": "row"}, {"shuffle": False}, {"world_size": 2, "rank": 1, "drop_last": True}):
        mem, st = loader(pair, mode="memory", **kw), loader(pair, mode="stream", **kw)
        for epoch in (0, 5):
            mem.set_epoch(epoch)
            st.set_epoch(epoch)
            same_batches(run(mem, unit=kw.get("unit", "episode")), run(st, unit=kw.get("unit", "episode")))


@pytest.mark.parametrize("mode,workers", [("memory", 0), ("stream", 0), ("stream", 2)])
def test_resume_mid_epoch_yields_the_uninterrupted_tail(pair, mode, workers):
    full = loader(pair, mode=mode, num_workers=workers, rank=1, world_size=2)
    full.set_epoch(7)
    whole = run(full)
    for k in (0, 1, 3, len(whole) - 1, len(whole)):
        part = loader(pair, mode=mode, num_workers=workers, rank=1, world_size=2)
        part.set_epoch(7)
        it = iter(part)
        for _ in range(k):
            next(it)
        state = part.state_dict()
        it.close()
        assert state["epoch"] == 7 and state["batches"] == k and all(type(v) is int for v in state.values())
        state = json.loads(json.dumps(state))  # survives a checkpoint as plain data
        fresh = loader(pair, mode=mode, num_workers=workers, rank=1, world_size=2)
        fresh.load_state_dict(state)
        fresh.set_epoch(7)  # a training loop does this; it must keep the position
        same_batches(run(fresh, whole=False), whole[k:])
        fresh.set_epoch(8)
        assert len(run(fresh)) == len(whole)  # the next epoch is whole again


def test_state_from_another_setup_is_refused(pair):
    state = loader(pair).state_dict()
    with pytest.raises(ValueError, match="batch_size"):
        loader(pair, batch_size=7).load_state_dict(state)


def test_unit_row_yields_every_row_once_with_its_episode_values(pair):
    ld = loader(pair, unit="row", batch_size=16)
    got = run(ld, unit="row")
    rows = sorted((e, int(f)) for b in got for e, f in zip(b["episode_id"], b["frame"]))
    assert rows == sorted((e, f) for e in kept_standard() for f in range(4))


def test_drop_last(pair):
    ld = loader(pair, batch_size=7, drop_last=True)
    got = run(ld)
    n = len(kept_standard())
    assert len(got) == n // 7 and all(len(b["episode_id"]) == 7 for b in got)


def sample_features(sample: dict, scale: float) -> dict:
    """A head-style feature: the mean over frames of x, and the label."""
    return {"feat": sample["feats.x"].mean(axis=0) * scale, "label": sample["meta.y"]}


def test_transform_runs_on_each_sample_in_workers(pair):
    t = functools.partial(sample_features, scale=2.0)
    ld = loader(pair, mode="stream", num_workers=2, transform=t)
    got = run(ld, check=False)
    for b in got:
        assert sorted(b) == ["episode_id", "feat", "label"]
        for i, e in enumerate(b["episode_id"]):
            np.testing.assert_allclose(b["feat"][i].numpy(), feats_of(num(e), 4)["x"].mean(axis=0) * 2)
            assert int(b["label"][i]) == num(e)
    same_batches(got, run(loader(pair, mode="memory", transform=t), check=False))
    with pytest.raises(ValueError, match="transform must be picklable"):
        loader(pair, transform=lambda s: s)


def test_frame_count_mismatch_is_a_clear_error(tmp_path):
    f = write_cache(tmp_path / "f", FEATS, [[0, 1, (2, 3)], [3]], "zarr")
    with pytest.raises(ValueError, match=r"same number of frames.*3 rows x 1.*4 rows x 3.*ep0002.*unit='row'"):
        make_loader({"f": f}, {"f": ["x"]}, batch_size=2)
    ld = make_loader({"f": f}, {"f": ["x"]}, batch_size=2, unit="row")
    assert ld.num_samples == 15


def test_auto_mode_streams_what_does_not_fit(pair):
    feats, meta = pair
    small = loader(pair)
    assert small.modes == {"feats": "memory", "meta": "memory"}
    feats_bytes = len(kept_standard()) * 4 * (3 * 4 + 8 + 2)
    budget = small.working_set_bytes + feats_bytes - 1  # meta fits beside the working set, feats does not
    ld = loader(pair, memory_budget=budget)
    assert ld.modes == {"feats": "stream", "meta": "memory"}
    same_batches(run(ld), run(loader(pair, mode="memory")))
    assert loader(pair, memory_budget=small.working_set_bytes).modes == {"feats": "stream", "meta": "stream"}
    with pytest.raises(ValueError, match="memory_budget"):
        loader(pair, memory_budget=1000)


def test_config_errors_name_the_field(pair):
    for kw, field in (({"mode": "disk"}, "mode"), ({"unit": "frame"}, "unit"), ({"rank": 2, "world_size": 2}, "rank"), ({"batch_size": 0}, "batch_size")):
        with pytest.raises(ValueError, match=f"LoaderConfig.{field}"):
            loader(pair, **kw)
    with pytest.raises(KeyError, match="arrays: flag, idx, x"):
        make_loader({"feats": pair[0]}, {"feats": ["nope"]}, batch_size=2)
    with pytest.raises(TypeError):
        LoaderConfig(batch_size=2, colour="red")
    with pytest.raises(TypeError, match="unknown option.*colour.*valid: batch_size"):
        loader(pair, colour="red")
    with pytest.raises(ValueError, match="epoch"):
        loader(pair).set_epoch(-1)


def test_cache_only_in_caches_filters_without_being_read(pair):
    feats, meta = pair
    ld = make_loader({"feats": open_cache(feats), "meta": open_cache(meta)}, {"feats": ["idx"]}, batch_size=4, block_rows=8)
    got = run(ld, check=False)
    assert sorted(ids(got)) == sorted(kept_standard()) and sorted(got[0]) == ["episode_id", "feats.idx"]


# VmHWM, not ru_maxrss: Linux carries a parent's RSS at fork into the child's ru_maxrss
PEAK_SCRIPT = textwrap.dedent(
    """
    import re, sys
    from navcache.cache_specs import make_loader
    ld = make_loader({"f": sys.argv[1]}, {"f": ["x"]}, batch_size=8, shuffle_buffer=32, block_rows=64, mode="stream")
    n = sum(len(b["episode_id"]) for b in ld)
    hwm = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
    print(n, hwm * 1024)
    """
)


def test_stream_peak_memory_does_not_grow_with_cache_size(tmp_path):
    from navcache.cache_specs.spec import ArraySpec, CacheSpec
    from navcache.cache_specs.layout import PARTS, part_id
    from navcache.cache_specs.manifest import finalize_cache
    from navcache.cache_specs.parts import EpisodeResult, write_part

    spec = CacheSpec("wide", 1, "frame", (ArraySpec("x", "float32", (2048,)),))  # 8 KiB rows, 32 KiB episodes
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((64, 4, 2048)).astype(np.float32)
    peaks, sizes = [], []
    for n_eps in (500, 2500):
        d = tmp_path / f"c{n_eps}"
        expected = {}
        for p in range(0, n_eps, 100):
            res = [EpisodeResult(eid(e), {"x": pool[e % 64]}) for e in range(p, min(p + 100, n_eps))]
            write_part(d / PARTS, part_id(p // 100), "fp", spec, {}, res, backend="zarr", chunk_rows=64)
            expected[part_id(p // 100)] = "fp"
        finalize_cache(d, expected, {"stage": "test"})
        out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(d)], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2])
        n, peak = map(int, out.stdout.split())
        assert n == n_eps
        peaks.append(peak)
        sizes.append(n_eps * 4 * 2048 * 4)
    # 5x the data (16 -> 82 MB): the peak may move by noise and per-episode metadata, not by the data
    assert peaks[1] - peaks[0] < 0.1 * (sizes[1] - sizes[0]), (peaks, sizes)


# -- the read path's shortcuts: direct raw-shard reads, recycled block and batch buffers --------


def _raw_part(tmp_path, backend="zarr-raw", rows=37, chunk_rows=8):
    from navcache.cache_specs.backends import get_backend

    rng = np.random.default_rng(0)
    arrays = {
        "f16": rng.standard_normal((rows, 3, 5)).astype(np.float16),
        "i64": rng.integers(-9, 9, rows).astype(np.int64),
        "b": rng.integers(0, 2, (rows, 2)).astype(bool),
    }
    d = tmp_path / "part"
    d.mkdir()
    b = get_backend(backend)
    b.write(d, arrays, chunk_rows)
    return b.open(d), arrays, d / b.data_name


def test_direct_shard_reads_equal_zarr_decoding_for_any_row_range(tmp_path):
    from navcache.cache_specs.backends.zarr_direct import ShardLayout

    data, arrays, root = _raw_part(tmp_path)
    ranges = [(0, 37), (0, 8), (8, 16), (3, 5), (5, 29), (30, 37), (36, 37), (0, 1)]
    for name, want in arrays.items():
        assert ShardLayout.of(root, name, data.metadata(name)) is not None, name
        for lo, hi in ranges:
            out = np.full((hi - lo, *want.shape[1:]), 7, want.dtype)
            data.read_into(name, lo, hi, out)
            np.testing.assert_array_equal(out, want[lo:hi])
            np.testing.assert_array_equal(np.asarray(data[name][lo:hi]), want[lo:hi])  # zarr's own decode agrees


def test_direct_reads_of_zstd_chunks_equal_zarr_decoding(tmp_path):
    from navcache.cache_specs.backends.zarr_direct import ShardLayout

    data, arrays, root = _raw_part(tmp_path, backend="zarr")
    assert ShardLayout.of(root, "f16", data.metadata("f16")).zstd
    for name, want in arrays.items():
        for lo, hi in [(4, 24), (0, 37), (36, 37), (8, 16)]:
            out = np.empty((hi - lo, *want.shape[1:]), want.dtype)
            data.read_into(name, lo, hi, out)
            np.testing.assert_array_equal(out, want[lo:hi])
            np.testing.assert_array_equal(np.asarray(data[name][lo:hi]), want[lo:hi])  # zarr's own decode agrees


def test_direct_read_of_a_corrupt_chunk_fails_its_checksum(tmp_path):
    data, arrays, root = _raw_part(tmp_path)
    shard = next(p for p in (root / "f16").rglob("*") if p.is_file() and p.name != "zarr.json")
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 0xFF  # inside chunk 0 (rows 0:8)
    shard.write_bytes(bytes(raw))
    out = np.empty((8, 3, 5), np.float16)
    data.read_into("f16", 8, 16, out)  # other chunks still read
    np.testing.assert_array_equal(out, arrays["f16"][8:16])
    with pytest.raises(ValueError, match="crc32c"):
        data.read_into("f16", 0, 8, np.empty((8, 3, 5), np.float16))
    raw[-3] ^= 0xFF  # the shard index's own checksum
    shard.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="index checksum"):
        type(data)(root).read_into("f16", 8, 16, out)


def test_a_recycled_batch_buffer_is_never_handed_out_while_a_batch_refers_to_it():
    from navcache.cache_specs.stream_buffers import BatchBuffers

    pool = BatchBuffers(keep=2)
    shapes, dtypes = {"a": (4,), "b": ()}, {"a": np.dtype(np.float32), "b": np.dtype(np.int64)}

    def batch(fill):
        out = {k: torch.from_numpy(v) for k, v in pool.get(3, shapes, dtypes).items()}
        for v in out.values():
            v.fill_(fill)
        return out

    def pieces(kept):
        return [np.asarray(v) for v in kept.values()] if isinstance(kept, dict) else [np.asarray(kept)]

    # whatever survives of a batch (the dict, one tensor, a view of it, its .numpy()) pins its buffer
    for hold in (lambda b: b, lambda b: b["a"], lambda b: b["a"][1:], lambda b: b["b"].numpy()):
        kept = hold(batch(1))
        later = [batch(2) for _ in range(4)]  # more batches than the pool keeps
        for old in pieces(kept):
            assert (old == 1).all()
            assert not any(np.shares_memory(old, new) for b in later for new in pieces(b))
        del kept, later
    b = batch(0)
    ptr = {k: v.data_ptr() for k, v in b.items()}
    del b  # nothing refers to its buffers any more: they are reused
    assert {k: v.data_ptr() for k, v in batch(0).items()} == ptr


def test_block_pool_hands_each_slot_out_once_and_close_wakes_waiters():
    from navcache.cache_specs.stream_buffers import BlockPool

    pool = BlockPool({"k": (10, np.dtype(np.float32))}, workers=2, per_worker=2, shared=False)
    got = [pool.acquire(1), pool.acquire(1)]
    assert sorted(got) == [2, 3]
    with pytest.raises(RuntimeError, match="in use"):
        pool.acquire(1)
    pool.release(got[0])
    assert pool.acquire(1) == got[0]
    with pytest.raises(RuntimeError, match="twice"):
        pool.release(0)
    with pytest.raises(ValueError):
        pool.view("k", 0, (11,))
    pool.close()
    assert pool.acquire(0) is None


def test_workers_block_on_a_full_pool_and_the_loader_stops_early_cleanly(pair):
    """prefetch_factor=1: one block buffer in flight per worker plus one being read; breaking off
    mid-epoch (with workers waiting for a slot) and resuming still gives the uninterrupted batches."""
    whole = run(loader(pair, num_workers=2, prefetch_factor=1))
    ld = loader(pair, num_workers=2, prefetch_factor=1)
    it = iter(ld)
    head = [next(it) for _ in range(3)]
    state = ld.state_dict()
    it.close()
    ld2 = loader(pair, num_workers=2, prefetch_factor=1)
    ld2.load_state_dict(state)
    tail = run(ld2, whole=False)
    assert ids(head + tail) == ids(whole)
