"""Random and batched reads through ``open_cache``, and the chunk layout the writer chooses for them.

Real caches written by ``write_part`` + ``finalize_cache`` in every backend: ``read`` of any batch
of episodes (ids or positions, repeats, any order) returns exactly the rows a plain concatenation
of the written arrays holds, whatever the chunking; a part's chunks hold whole episodes."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from navcache.cache_specs import open_cache
from navcache.cache_specs.backends import BACKENDS
from navcache.cache_specs.layout import PARTS, part_id
from navcache.cache_specs.parts import MIN_ALIGNED_BYTES, episode_chunk_rows, write_part
from navcache.cache_specs.testing.backends import FRAME_SPEC, build_cache, expected_arrays, make_episode, quarantined

DIMS = {"D": 5, "G": 2}


def _plan(lengths_per_part):
    k = 0
    plan = []
    for lengths in lengths_per_part:
        part = []
        for n in lengths:
            part.append(make_episode(FRAME_SPEC, DIMS, f"ep{k:03d}", n, k) if n >= 0 else quarantined(f"ep{k:03d}", "bad"))
            k += 1
        plan.append(part)
    return plan


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_reads_equal_the_written_rows(tmp_path, backend):
    # fixed-length episodes (aligned chunks), a part of unequal ones, a quarantined one, an empty one
    plan = _plan([[4, 4, 4, 4, 4], [3, 5, -1, 2, 0, 6], [4, 4]])
    build_cache(tmp_path / "c", backend, FRAME_SPEC, DIMS, plan, chunk_rows=8)
    want = expected_arrays(FRAME_SPEC, DIMS, plan)
    with open_cache(tmp_path / "c") as c:
        start, length = c.offsets()
        rng = np.random.default_rng(0)
        batches = [rng.integers(0, len(c), 7) for _ in range(5)] + [np.arange(len(c)), np.arange(len(c))[::-1], np.array([3, 3, 0, -1])]
        for b in batches:
            got = c.read(b.tolist())
            rows = np.concatenate([np.arange(start[i], start[i] + length[i]) for i in b])
            for name, w in want.items():
                np.testing.assert_array_equal(got[name], w[rows], err_msg=f"{backend} {name} {b}")
                np.testing.assert_array_equal(c.array(name)[rows], w[rows])  # the row view agrees
        ids = [c.episodes[i] for i in (5, 0, 2)]
        got = c.read(ids, arrays=["feat"])
        assert list(got) == ["feat"]
        np.testing.assert_array_equal(got["feat"], np.concatenate([c[e]["feat"] for e in ids]))
        with pytest.raises(IndexError):
            c.read([len(c)])
        with pytest.raises(KeyError, match="arrays"):
            c.read([0], arrays=["nope"])


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_a_reader_with_few_open_parts_reads_every_part(tmp_path, backend):
    plan = _plan([[3, 3]] * 5)
    build_cache(tmp_path / "c", backend, FRAME_SPEC, DIMS, plan)
    want = expected_arrays(FRAME_SPEC, DIMS, plan)
    from navcache.cache_specs.reader import CacheReader

    c = CacheReader(tmp_path / "c", max_open=2)
    for _ in range(2):
        for name, w in want.items():
            np.testing.assert_array_equal(c.load(name), w)
        assert len(c._open) <= 2
    c.close()
    np.testing.assert_array_equal(c.read([9])["feat"], want["feat"][27:30])  # reopens after close


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(0, 40), min_size=1, max_size=12), row_bytes=st.sampled_from([1, 8, 2048, 32768]),
       chunk_rows=st.integers(1, 128))
def test_chunks_hold_whole_episodes_or_tile_them(lengths, row_bytes, chunk_rows):
    c = episode_chunk_rows(lengths, row_bytes, chunk_rows)
    assert c >= 1
    ls = {n for n in lengths if n}
    if len(ls) == 1 and next(iter(ls)) <= chunk_rows:
        (n,) = ls
        assert c % n == 0 and c <= chunk_rows and (c // n) & (c // n - 1) == 0  # 2^j whole episodes
    elif ls and c != chunk_rows:
        assert all(n % c == 0 for n in ls) and c <= chunk_rows  # each episode is whole chunks
        assert c * row_bytes >= MIN_ALIGNED_BYTES
    elif not ls:
        assert c == chunk_rows


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_written_chunks_follow_episodes(tmp_path, backend):
    # 8-row episodes of big rows: one episode a chunk (64-row chunks made a read decode 8 episodes);
    # tiny rows: chunk_rows as before
    from navcache.cache_specs.spec import ArraySpec, CacheSpec

    spec = CacheSpec("big", 1, "frame", (ArraySpec("x", "float16", (4, 4, 1024)), ArraySpec("i", "int64", ())))
    res = [make_episode(spec, {}, f"e{k}", 8, k) for k in range(16)]
    meta = write_part(tmp_path / PARTS, part_id(0), "fp", spec, {}, res, backend=backend, chunk_rows=64)
    from navcache.cache_specs.parts import open_part_data

    data = open_part_data(tmp_path / PARTS / part_id(0), meta)
    try:
        assert data.chunk_rows("x") == 8 and data.chunk_rows("i") == 64
        np.testing.assert_array_equal(data["x"][8:16], res[1].arrays["x"])
    finally:
        data.close()


def test_threads_reading_through_a_small_lru_get_the_written_rows(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from navcache.cache_specs.reader import CacheReader

    plan = _plan([[2, 2, 2]] * 6)
    build_cache(tmp_path / "c", "zarr-raw", FRAME_SPEC, DIMS, plan)
    want = expected_arrays(FRAME_SPEC, DIMS, plan)["feat"]
    c = CacheReader(tmp_path / "c", max_open=2)  # parts evicted while other threads read them

    def work(seed):
        rng = np.random.default_rng(seed)
        for i in rng.integers(0, len(c), 200).tolist():
            np.testing.assert_array_equal(c[i]["feat"], want[2 * i : 2 * i + 2])
        return True

    with ThreadPoolExecutor(4) as ex:
        assert all(ex.map(work, range(4)))
    c.close()
