"""Uncompressed chunks read from memory-mapped files (``backends.mapped``): the damage model.

The damage conformance suite (``cache_specs.testing.damage``) damages parts before any reader
opens them; here the damage lands on a part a reader has open and mapped, or between the reader's
file listing and its first read, on both uncompressed backends.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import time

import numpy as np
import pytest

from navcache.cache_specs import open_cache
from navcache.cache_specs.backends import get_backend
from navcache.cache_specs.errors import DamagedCache
from navcache.cache_specs.layout import PARTS
from navcache.cache_specs.testing.damage import (
    FRAMES, PER_PART, TARGET, _truncate, build, data_file, episode_arrays, episode_id, first_chunk_offset, flip_byte,
)

RAW = ["zarr-raw", "hdf5-raw"]
CHUNK_ROWS = 2  # the damage suite's cache: 2 rows a chunk, 6-row episodes of feat [6, 4] float32


@pytest.fixture(scope="module", params=RAW)
def template(request, tmp_path_factory):
    return build(tmp_path_factory.mktemp(f"mapped_{request.param}") / "cache", request.param)


@pytest.fixture
def cache(template, tmp_path):
    shutil.copytree(template, tmp_path / "cache")
    return tmp_path / "cache"


def test_a_chunk_damaged_in_an_open_mapped_part_raises_on_its_first_read(cache):
    """The part is open and its map read (episode 0); a byte of episode 1's first chunk, not read
    yet, is flipped in place: its first read checks the checksum and names part and array."""
    c = open_cache(cache)
    np.testing.assert_array_equal(c[episode_id(1, 0)]["feat"], episode_arrays(1, 0)["feat"])
    flip_byte(data_file(cache / PARTS / TARGET), chunk_offset(cache / PARTS / TARGET, FRAMES // CHUNK_ROWS) + 3)
    with pytest.raises(DamagedCache, match=rf"part {TARGET} is damaged: array 'feat' rows {FRAMES}:{2 * FRAMES} do not decode.*(crc32c|fletcher32) differ"):
        c[episode_id(1, 1)]
    np.testing.assert_array_equal(c[episode_id(1, 0)]["feat"], episode_arrays(1, 0)["feat"])  # its checked chunks still read


def chunk_offset(part_dir, k: int) -> int:
    """Byte offset of ``feat``'s chunk ``k`` in ``data_file``: HDF5's chunk table, or zarr's shard index."""
    f = data_file(part_dir)
    if f.suffix == ".h5":
        import h5py

        with h5py.File(f, "r") as h:
            return int(h["feat"].id.get_chunk_info(k).byte_offset)
    meta = json.loads((part_dir / "data.zarr" / "feat" / "zarr.json").read_text())
    per = meta["chunk_grid"]["configuration"]["chunk_shape"][0] // meta["codecs"][0]["configuration"]["chunk_shape"][0]
    return int(np.frombuffer(f.read_bytes()[-(16 * per + 4) : -4], "<u8").reshape(per, 2)[k, 0])  # the index ends the shard


def test_checksums_are_verified_once_per_open_part(cache):
    """A chunk's checksum is checked on its first read in an open part, not on every read; a reader
    that opens the part afresh checks it again (integrity.py's documented model)."""
    c = open_cache(cache)
    np.testing.assert_array_equal(c[episode_id(1, 0)]["feat"], episode_arrays(1, 0)["feat"])
    flip_byte(data_file(cache / PARTS / TARGET), first_chunk_offset(cache / PARTS / TARGET) + 1)
    changed = c[episode_id(1, 0)]["feat"]  # verified before the flip: read as the bytes now are
    assert not np.array_equal(changed, episode_arrays(1, 0)["feat"])
    with pytest.raises(DamagedCache, match=rf"part {TARGET} is damaged: array 'feat'"):
        open_cache(cache)[episode_id(1, 0)]


def _in_child(fn) -> int:
    """Run ``fn`` in a forked child; its exit status (negative: the signal that killed it, e.g.
    SIGBUS from a mapped page past a file's end), so a wrong implementation fails this test
    instead of killing pytest."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = fn()
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)  # a hung child (a lock held at the fork) fails the test, not the run
    os.waitpid(pid, 0)
    return -signal.SIGKILL


def test_a_shard_cut_after_the_listing_is_caught_before_the_map_is_read(cache):
    """The reader checked the part's files (sizes as recorded), then the data file is cut in half
    before its first read: the read raises DamagedCache naming the part instead of dying of SIGBUS."""
    c = open_cache(cache)
    c[episode_id(0, 0)]  # the index read (polars, whose threads must not meet a fork) and another part opened
    c.part_meta(TARGET)  # the listing passes: the file is whole now
    f = data_file(cache / PARTS / TARGET)
    _truncate(f, f.stat().st_size // 2)

    def read() -> int:
        try:
            c[episode_id(1, 1)]
        except DamagedCache as e:
            return 0 if f"part {TARGET} is damaged" in str(e) else 2
        return 3  # read as data

    assert _in_child(read) == 0


@pytest.mark.parametrize("backend", RAW)
def test_a_truncated_shard_is_refused_when_the_part_opens_unlisted(tmp_path, backend):
    """Without the part.json listing (``files_checked``): the map's own extent check refuses a
    shard cut short, through the backend's error turned into DamagedCache."""
    from navcache.cache_specs.parts import open_part_data, read_part_meta

    c = build(tmp_path / "cache", backend)
    pdir = c / PARTS / TARGET
    f = data_file(pdir)
    _truncate(f, f.stat().st_size - 8)

    def read() -> int:
        try:
            data = open_part_data(pdir, read_part_meta(pdir), files_checked=True)
            out = np.empty((2 * FRAMES, 4), np.float32)
            data.read_into("feat", 0, 2 * FRAMES, out)
        except DamagedCache as e:
            return 0 if f"part {TARGET} is damaged" in str(e) else 2
        return 3

    assert _in_child(read) == 0


def test_reads_are_owned_arrays_that_outlive_the_reader(cache):
    c = open_cache(cache)
    got = c.read([episode_id(0, 1), episode_id(1, 0), episode_id(2, 1)])["feat"]
    assert got.flags.owndata and got.flags.writeable
    c.close()
    want = np.concatenate([episode_arrays(p, i)["feat"] for p, i in ((0, 1), (1, 0), (2, 1))])
    np.testing.assert_array_equal(got, want)


def test_a_forked_child_opens_its_own_parts(cache):
    """Parts (maps, HDF5 handles) opened by the parent are not used by a forked child: it opens
    its own on first use, and reads the same arrays."""
    c = open_cache(cache)
    for p in range(3):
        c[episode_id(p, 0)]
    parent_parts = {id(e[0]) for e in c._open.values()}

    def read() -> int:
        for p in range(3):
            for i in range(PER_PART):
                if not np.array_equal(c[episode_id(p, i)]["feat"], episode_arrays(p, i)["feat"]):
                    return 2
        return 0 if len(c._open) == 3 and not parent_parts & {id(e[0]) for e in c._open.values()} else 4

    assert _in_child(read) == 0
    assert {id(e[0]) for e in c._open.values()} == parent_parts  # the parent's stay as they were


# -- layouts our writer does not make, read from the map all the same -----------------------------


def test_zarr_raw_with_unwritten_chunks_among_written_ones(tmp_path):
    """All-zero chunks are never written (zarr's write_empty_chunks=False): the chunk table has
    holes, read as the fill value through the per-chunk path."""
    be = get_backend("zarr-raw")
    a = np.zeros((37, 3), np.int32)
    a[5:7] = 1
    a[30] = 9
    be.write(tmp_path, {"a": a}, 4)
    data = be.open(tmp_path)
    assert data._reader("a")._grid is None  # irregular: not one strided view
    for lo, hi in [(0, 37), (3, 9), (8, 12), (29, 37), (36, 37)]:
        out = np.full((hi - lo, 3), -1, np.int32)
        data.read_into("a", lo, hi, out)
        np.testing.assert_array_equal(out, a[lo:hi])
    data.close()


def test_hdf5_contiguous_unfiltered_and_gzip_datasets(tmp_path):
    """A contiguous dataset (``get_offset``) and an unfiltered chunked one are mapped; a gzip one is
    read by HDF5; all give h5py's values."""
    import h5py

    rng = np.random.default_rng(3)
    arrays = {"contig": rng.standard_normal((11, 5)).astype(np.float32), "chunked": rng.integers(0, 99, (13, 2, 3)).astype(np.int16),
              "gz": rng.standard_normal((9, 4))}
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f.create_dataset("contig", data=arrays["contig"])
        f.create_dataset("chunked", data=arrays["chunked"], chunks=(4, 2, 3))
        f.create_dataset("gz", data=arrays["gz"], chunks=(2, 4), compression="gzip")
    data = get_backend("hdf5-raw").open(tmp_path)
    for name, a in arrays.items():
        for lo, hi in [(0, len(a)), (1, 3), (3, len(a))]:
            out = np.empty((hi - lo,) + a.shape[1:], a.dtype)
            data.read_into(name, lo, hi, out)
            np.testing.assert_array_equal(out, a[lo:hi])
    assert data._rows["contig"] is not None and data._rows["chunked"] is not None and data._rows["gz"] is None
    data.close()


def test_a_zarr_index_naming_bytes_past_the_shard_end_is_refused(tmp_path):
    """A shard index (crc32c re-sealed, as a buggy writer would leave it) whose last chunk runs past
    the file's end: refused before the map is read, not SIGBUS; only the map's extent check sees it."""
    import google_crc32c

    be = get_backend("zarr-raw")
    be.write(tmp_path, {"a": np.arange(4096 * 4, dtype=np.float32).reshape(-1, 4)}, 1024)
    f = next(p for p in (tmp_path / "data.zarr" / "a" / "c").rglob("*") if p.is_file())
    raw = bytearray(f.read_bytes())
    per = 4
    index = np.frombuffer(bytes(raw[-(16 * per + 4) : -4]), "<u8").reshape(per, 2).copy()
    index[-1, 0] += 1 << 20  # a page-aligned distance past the end: mapped, it would be SIGBUS
    raw[-(16 * per + 4) : -4] = index.tobytes()
    raw[-4:] = google_crc32c.value(index.tobytes()).to_bytes(4, "little")
    f.write_bytes(bytes(raw))

    def read() -> int:
        data = be.open(tmp_path)
        try:
            data.read_into("a", 4000, 4096, np.empty((96, 4), np.float32))
        except ValueError as e:
            return 0 if "past the" in str(e) else 2
        return 3

    assert _in_child(read) == 0


def test_a_batch_over_one_mapped_part_reads_its_runs_and_names_the_damaged_one(cache):
    """Two episodes of one part in reverse storage order: one call reads both runs into their
    places; a damaged chunk in one run raises naming that run's rows, not the batch's."""
    c = open_cache(cache)
    got = c.read([episode_id(1, 1), episode_id(1, 0), episode_id(0, 1)])["feat"]
    want = np.concatenate([episode_arrays(p, i)["feat"] for p, i in ((1, 1), (1, 0), (0, 1))])
    np.testing.assert_array_equal(got, want)
    c.close()
    flip_byte(data_file(cache / PARTS / TARGET), chunk_offset(cache / PARTS / TARGET, FRAMES // CHUNK_ROWS) + 3)
    with pytest.raises(DamagedCache, match=rf"part {TARGET} is damaged: array 'feat' rows {FRAMES}:{2 * FRAMES} do not decode"):
        open_cache(cache).read([episode_id(1, 1), episode_id(1, 0)])  # not adjacent in output order: two runs
