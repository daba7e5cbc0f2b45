"""``verify_cache`` names each kind of damage, and the part it hit, on real caches on disk.

One small complete cache (3 parts) is built per backend, copied for every test, damaged in one
precise way, then verified. Expected reports are exact wherever the damage determines them.
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from navcache.cache_specs.testing.backends import SPECS, build_cache, make_episode, quarantined  # noqa: E402

from navcache.cache_specs import open_cache  # noqa: E402
from navcache.cache_specs.errors import DamagedCache  # noqa: E402
from navcache.cache_specs.layout import INDEX, MANIFEST, PART_JSON, PARTS, part_id  # noqa: E402
from navcache.cache_specs.manifest import invalidate  # noqa: E402
from navcache.cache_specs.parts import write_part  # noqa: E402
from navcache.cache_specs.verify import Damage, damaged_parts, verify_cache, verify_part  # noqa: E402

SPEC, DIMS = SPECS["frame"]
N_PARTS = 3
TARGET = part_id(1)  # the part most tests damage
DECODED = {"unreadable_array", "array_mismatch"}


def _plan():
    plan = [[make_episode(SPEC, DIMS, f"p{p}e{i}", 6 + i, 10 * p + i) for i in range(2)] for p in range(N_PARTS)]
    plan[1].insert(1, quarantined("p1_bad", "decode error"))
    return plan


@pytest.fixture(scope="module", params=["zarr", "hdf5"])
def template(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"template_{request.param}")
    build_cache(root / "cache", request.param, SPEC, DIMS, _plan(), chunk_rows=3)
    return request.param, root / "cache"


@pytest.fixture
def cache(template, tmp_path):
    """(backend, a fresh copy of the complete cache) for one test to damage."""
    backend, src = template
    dst = tmp_path / "cache"
    shutil.copytree(src, dst)
    return backend, dst


def report(damage: list[Damage]) -> list[tuple[str, str | None]]:
    return sorted((d.kind, d.part) for d in damage)


def data_file(part_dir: Path, backend: str, array: str = "feat") -> Path:
    """The file holding ``array``'s data: its zarr shard, or the part's HDF5 file."""
    if backend == "hdf5":
        return part_dir / "data.h5"
    shards = [p for p in (part_dir / "data.zarr" / array / "c").rglob("*") if p.is_file()]
    assert len(shards) == 1, shards  # one shard per array and part
    return shards[0]


def first_chunk_bytes(part_dir: Path, backend: str, array: str = "feat") -> tuple[Path, int, int]:
    """(file, byte offset, stored size) of the first chunk's stored (compressed) bytes."""
    f = data_file(part_dir, backend, array)
    if backend == "hdf5":
        import h5py

        with h5py.File(f, "r") as h:
            assert h[array].fletcher32, "HDF5 parts carry per-chunk fletcher32 checksums"
            info = h[array].id.get_chunk_info(0)
            return f, int(info.byte_offset), int(info.size)
    # zarr v3 shard: chunk bytes, then an index of (offset, nbytes) uint64 pairs + a crc32c at the end
    meta = json.loads((part_dir / "data.zarr" / array / "zarr.json").read_text())
    shard_codec = meta["codecs"][0]
    assert shard_codec["name"] == "sharding_indexed" and shard_codec["configuration"]["index_location"] == "end"
    shard_shape = meta["chunk_grid"]["configuration"]["chunk_shape"]
    inner = shard_codec["configuration"]["chunk_shape"]
    n_chunks = int(np.prod([s // c for s, c in zip(shard_shape, inner)]))
    raw = f.read_bytes()
    index = raw[len(raw) - (16 * n_chunks + 4) : -4]
    offset, nbytes = struct.unpack("<QQ", index[:16])
    assert nbytes < len(raw), "the first chunk is stored"
    return f, int(offset), int(nbytes)


def flip_byte(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


# -- an undamaged cache ------------------------------------------------------------------------


def test_undamaged_cache_verifies_clean(cache):
    backend, c = cache
    assert verify_cache(c) == []
    assert verify_cache(c, deep=False) == []
    assert damaged_parts(verify_cache(c)) == set()
    for i in range(N_PARTS):
        assert verify_part(c / PARTS / part_id(i)) == []
    assert len(open_cache(c)) == 2 * N_PARTS


# -- data-file damage --------------------------------------------------------------------------


def test_flipped_byte_in_the_middle_of_a_data_file(cache):
    backend, c = cache
    f = data_file(c / PARTS / TARGET, backend)
    flip_byte(f, f.stat().st_size // 2)
    rel = str(f.relative_to(c / PARTS / TARGET))
    # file level: exact
    shallow = verify_cache(c, deep=False)
    assert report(shallow) == [("corrupt_file", TARGET)]
    assert rel in shallow[0].detail
    # decoded level: where the byte lands decides whether decoding notices; the file check always does
    deep = verify_cache(c)
    assert ("corrupt_file", TARGET) in report(deep)
    assert {k for k, _ in report(deep)} <= {"corrupt_file"} | DECODED
    assert {p for _, p in report(deep)} == {TARGET}
    assert damaged_parts(deep) == {TARGET}


def test_flipped_byte_inside_chunk_data_fails_decoding_too(cache):
    backend, c = cache
    f, offset, size = first_chunk_bytes(c / PARTS / TARGET, backend)
    flip_byte(f, offset + size // 2)
    deep = verify_cache(c)
    decoded = [d for d in deep if d.kind in DECODED]
    assert report([d for d in deep if d.kind not in DECODED]) == [("corrupt_file", TARGET)]
    assert len(decoded) == 1 and decoded[0].part == TARGET and "feat" in decoded[0].detail
    if backend == "hdf5":
        # fletcher32: HDF5 itself refuses the chunk rather than returning changed values
        assert decoded[0].kind == "unreadable_array"
    # a reader turns the backend's checksum failure into one error naming the part and the fix
    with open_cache(c) as r, pytest.raises(DamagedCache, match=f"part {TARGET} is damaged.*navcache verify --repair"):
        r.load("feat")
    assert damaged_parts(deep) == {TARGET}
    # other arrays of the same part and other parts still read fine
    with open_cache(c) as r:
        np.testing.assert_array_equal(r.load("idx"), np.concatenate([e.arrays["idx"] for p in _plan() for e in p if e.reason is None]))


def test_truncated_data_file(cache):
    backend, c = cache
    f = data_file(c / PARTS / TARGET, backend)
    size = f.stat().st_size
    with open(f, "r+b") as fh:
        fh.truncate(size // 2)
    assert report(verify_cache(c, deep=False)) == [("truncated_file", TARGET)]
    deep = verify_cache(c)
    assert report(deep) == [("truncated_file", TARGET), ("unreadable_array", TARGET)]
    assert f"{size // 2} < {size}" in next(d for d in deep if d.kind == "truncated_file").detail


def test_data_file_grown_longer(cache):
    backend, c = cache
    f = data_file(c / PARTS / TARGET, backend)
    with open(f, "ab") as fh:
        fh.write(b"\0" * 16)
    assert report(verify_cache(c, deep=False)) == [("size_mismatch", TARGET)]
    deep = verify_cache(c)
    assert ("size_mismatch", TARGET) in report(deep)
    assert {k for k, _ in report(deep)} <= {"size_mismatch"} | DECODED and {p for _, p in report(deep)} == {TARGET}


def test_deleted_zarr_shard_file(cache):
    backend, c = cache
    if backend != "zarr":
        pytest.skip("zarr only: an HDF5 part is one file (see test_deleted_hdf5_file)")
    f = data_file(c / PARTS / TARGET, backend)
    rel = str(f.relative_to(c / PARTS / TARGET))
    f.unlink()
    deep = verify_cache(c)
    # zarr reads a missing shard as fill values: the file check and the value check both catch it
    assert report(deep) == [("array_mismatch", TARGET), ("missing_file", TARGET)]
    assert next(d for d in deep if d.kind == "missing_file").detail == rel
    assert "feat" in next(d for d in deep if d.kind == "array_mismatch").detail


def test_deleted_zarr_array_metadata(cache):
    backend, c = cache
    if backend != "zarr":
        pytest.skip("zarr only")
    (c / PARTS / TARGET / "data.zarr" / "feat" / "zarr.json").unlink()
    assert report(verify_cache(c)) == [("missing_file", TARGET), ("unreadable_array", TARGET)]


def test_deleted_hdf5_file(cache):
    backend, c = cache
    if backend != "hdf5":
        pytest.skip("hdf5 only")
    (c / PARTS / TARGET / "data.h5").unlink()
    assert report(verify_cache(c)) == [("missing_file", TARGET), ("unreadable_array", TARGET)]


# -- part-level damage -------------------------------------------------------------------------


def test_deleted_part_folder(cache):
    backend, c = cache
    shutil.rmtree(c / PARTS / TARGET)
    damage = verify_cache(c)
    assert report(damage) == [("missing_part", TARGET)]
    assert damaged_parts(damage) == {TARGET}


def test_part_json_edited_disagrees_with_manifest(cache):
    backend, c = cache
    pj = c / PARTS / TARGET / PART_JSON
    meta = json.loads(pj.read_text())
    meta["fingerprint"] = "someone-else-rebuilt-this"
    pj.write_text(json.dumps(meta, indent=1, sort_keys=True))
    damage = verify_cache(c)
    assert report(damage) == [("part_mismatch", TARGET)]
    assert damaged_parts(damage) == {TARGET}


def test_part_json_rewritten_with_same_fingerprint(cache):
    backend, c = cache
    pj = c / PARTS / TARGET / PART_JSON
    meta = json.loads(pj.read_text())
    meta["written_at"] = "1999-01-01T00:00:00Z"  # same fingerprint, other bytes: checksum catches it
    pj.write_text(json.dumps(meta))
    assert report(verify_cache(c)) == [("part_mismatch", TARGET)]


def test_part_json_unreadable(cache):
    backend, c = cache
    (c / PARTS / TARGET / PART_JSON).write_text("{not json")
    assert report(verify_cache(c)) == [("missing_part", TARGET)]


def test_orphan_temporary_folder(cache):
    backend, c = cache
    tmp = c / PARTS / ".tmp-part-00009-123-abcd"
    tmp.mkdir()
    (tmp / "half-written.bin").write_bytes(b"\1" * 100)
    damage = verify_cache(c)
    assert report(damage) == [("orphan_temp", None)]
    assert damage[0].detail == f"{PARTS}/.tmp-part-00009-123-abcd"
    assert damaged_parts(damage) == set()


def test_orphan_trash_folder(cache):
    backend, c = cache
    (c / PARTS / ".trash-part-00001-77-ffff").mkdir()
    assert report(verify_cache(c)) == [("orphan_temp", None)]


def test_unlisted_part_folder(cache):
    backend, c = cache
    extra = part_id(N_PARTS)
    write_part(c / PARTS, extra, "fp-extra", SPEC, DIMS, [make_episode(SPEC, DIMS, "x", 3, 99)], backend=backend)
    damage = verify_cache(c)
    assert report(damage) == [("orphan_part", extra)]
    assert damaged_parts(damage) == set()  # an extra part does not damage the listed ones
    assert "x" not in open_cache(c)  # and readers never see it


def test_unexpected_file_inside_a_part(cache):
    backend, c = cache
    (c / PARTS / TARGET / "notes.txt").write_text("hello")
    damage = verify_cache(c)
    assert report(damage) == [("unexpected_file", TARGET)]
    assert damage[0].detail == "notes.txt"
    assert damaged_parts(damage) == {TARGET}


def test_unexpected_file_inside_the_data(cache):
    backend, c = cache
    stray = (c / PARTS / TARGET / "data.zarr" / "feat" / "stray") if backend == "zarr" else (c / PARTS / TARGET / "data.h5.bak")
    stray.write_bytes(b"x")
    damage = verify_cache(c)
    assert report(damage) == [("unexpected_file", TARGET)]
    assert damage[0].detail == str(stray.relative_to(c / PARTS / TARGET))


# -- cache-level damage ------------------------------------------------------------------------


def test_corrupt_index(cache):
    backend, c = cache
    idx = c / INDEX
    raw = bytearray(idx.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 8] = b"\xde\xad\xbe\xef" * 2
    idx.write_bytes(bytes(raw))
    damage = verify_cache(c)
    assert report(damage) == [("bad_index", None)]
    assert damaged_parts(damage) == set()


def test_missing_index(cache):
    backend, c = cache
    (c / INDEX).unlink()
    assert report(verify_cache(c)) == [("bad_index", None)]


def test_removed_manifest(cache):
    backend, c = cache
    (c / MANIFEST).unlink()
    assert report(verify_cache(c)) == [("no_manifest", None)]


def test_invalidated_cache(cache):
    backend, c = cache
    invalidate(c)
    assert report(verify_cache(c)) == [("no_manifest", None)]


def test_without_manifest_parts_are_still_checked(cache):
    backend, c = cache
    (c / MANIFEST).unlink()
    (c / PARTS / TARGET / "notes.txt").write_text("x")
    assert report(verify_cache(c, deep=False)) == [("no_manifest", None), ("unexpected_file", TARGET)]


def test_unreadable_manifest(cache):
    backend, c = cache
    (c / MANIFEST).write_text("{truncated")
    assert report(verify_cache(c)) == [("bad_manifest", None)]


def test_orphan_index_temp_file_in_the_cache_folder(cache):
    backend, c = cache
    (c / ".tmp-index.parquet-7326-59ccf2db").write_bytes(b"PAR1 half")
    damage = verify_cache(c)
    assert report(damage) == [("orphan_temp", None)] and damage[0].detail == ".tmp-index.parquet-7326-59ccf2db"


@pytest.mark.parametrize("edit", ["stats", "counts", "spec"])
def test_manifest_content_edited(cache, edit):
    backend, c = cache
    m = json.loads((c / MANIFEST).read_text())
    assert "manifest_sha256" in m
    if edit == "stats":
        m["stats"] = {"telemetry": {"mean": [0.1]}}
    elif edit == "counts":
        m["counts"]["rows"] += 1
    else:
        next(iter(m["spec"]["arrays"].values()))["dtype"] = "float64"
    (c / MANIFEST).write_text(json.dumps(m))
    damage = verify_cache(c)
    assert report(damage) == [("bad_manifest", None)] and "differs from its manifest_sha256" in damage[0].detail


# -- several damages at once --------------------------------------------------------------------


def test_damaged_parts_names_exactly_the_damaged_ones(cache):
    backend, c = cache
    f = data_file(c / PARTS / part_id(0), backend)
    flip_byte(f, f.stat().st_size // 2)
    shutil.rmtree(c / PARTS / part_id(2))
    (c / PARTS / ".tmp-part-00009-123-abcd").mkdir()
    write_part(c / PARTS, part_id(7), "fp7", SPEC, DIMS, [make_episode(SPEC, DIMS, "x", 2, 5)], backend=backend)
    damage = verify_cache(c)
    kinds = report(damage)
    assert ("corrupt_file", part_id(0)) in kinds
    assert ("missing_part", part_id(2)) in kinds
    assert ("orphan_part", part_id(7)) in kinds
    assert ("orphan_temp", None) in kinds
    assert all(p != part_id(1) for _, p in kinds)
    assert damaged_parts(damage) == {part_id(0), part_id(2)}
    assert all(str(d).startswith(d.kind) for d in damage)


# -- log-structured caches: parts holding dead rows ---------------------------------------------


@pytest.fixture(params=["zarr", "hdf5"])
def dead_rows(request, tmp_path):
    """A cache whose part 0 holds a dead row (episode b was re-encoded into part 1) and whose
    live episodes interleave across parts in index order: (backend, cache, {id: arrays})."""
    from navcache.cache_specs.finalize import finalize

    backend, c = request.param, tmp_path / "cache"
    eps = {k: make_episode(SPEC, DIMS, k, n, seed) for seed, (k, n) in enumerate({"a": 3, "b": 2, "c": 4, "d": 1, "e": 5}.items())}
    b2 = make_episode(SPEC, DIMS, "b", 6, 99)  # the new version of b
    write_part(c / PARTS, part_id(0), "f0", SPEC, DIMS, [eps["a"], eps["b"], eps["c"]], backend=backend, episode_fingerprints={"a": "a", "b": "b1", "c": "c"})
    write_part(c / PARTS, part_id(1), "f1", SPEC, DIMS, [b2, eps["d"], eps["e"]], backend=backend, episode_fingerprints={"b": "b2", "d": "d", "e": "e"})
    layout = [("a", part_id(0)), ("b", part_id(1)), ("c", part_id(0)), ("d", part_id(1)), ("e", part_id(1))]
    finalize(c, layout, {part_id(0): "f0", part_id(1): "f1"}, {"stage": "test", "backend": backend}, part_size=2, min_live=0.0)
    return backend, c, {**{k: v.arrays for k, v in eps.items()}, "b": b2.arrays}


def test_reader_and_verify_on_parts_with_dead_rows(dead_rows):
    backend, c, want = dead_rows
    assert verify_cache(c) == [] and verify_cache(c, deep=False) == []
    r = open_cache(c)
    assert r.episodes == ["a", "b", "c", "d", "e"] and r.index["part"].to_list() == [part_id(i) for i in (0, 1, 0, 1, 1)]
    for name in r.array_names:
        full = np.concatenate([np.asarray(want[k][name]) for k in r.episodes])
        np.testing.assert_array_equal(r.load(name), full)
        np.testing.assert_array_equal(r.array(name)[[-1, 0, 7, 3]], full[[-1, 0, 7, 3]])
        np.testing.assert_array_equal(r.array(name)[4:12], full[4:12])
    start, length = r.offsets()
    assert length.tolist() == [3, 6, 4, 1, 5] and start.tolist() == [0, 3, 9, 13, 14]
    for k in r.episodes:
        for name, v in r[k].items():
            np.testing.assert_array_equal(v, want[k][name])
    assert r.manifest["counts"]["rows"] == 19  # live rows only: b's 2 dead rows are not counted


def test_verify_still_finds_damage_next_to_dead_rows(dead_rows):
    import pyarrow.parquet as pq

    from navcache.cache_specs.layout import sha256_file
    from navcache.cache_specs.manifest import MANIFEST_SHA_KEY, index_rows_table, manifest_checksum

    backend, c, _ = dead_rows
    f = data_file(c / PARTS / part_id(0), backend)
    flip_byte(f, f.stat().st_size // 2)
    assert report(verify_cache(c, deep=False)) == [("corrupt_file", part_id(0))]
    # an index re-pointed at the dead row, with its checksum recorded: the rows no longer match
    c2 = c.parent / "c2"
    shutil.copytree(c, c2)
    t = pq.read_table(c2 / INDEX).to_pylist()
    t[1]["part"] = part_id(0)
    pq.write_table(index_rows_table((row["part"], row) for row in t), c2 / INDEX)
    m = json.loads((c2 / MANIFEST).read_text())
    m["index_sha256"] = sha256_file(c2 / INDEX)
    m[MANIFEST_SHA_KEY] = manifest_checksum(m)
    (c2 / MANIFEST).write_text(json.dumps(m))
    assert ("bad_index", None) in report(verify_cache(c2, deep=False))


# -- strays: what no writer of ours makes ---------------------------------------------------------


def test_junk_folder_beside_parts_is_a_stray(cache):
    backend, c = cache
    (c / "junk").mkdir()
    (c / "junk" / "notes.txt").write_text("mine")
    (c / "README.txt").write_text("mine too")
    damage = verify_cache(c)
    assert report(damage) == [("stray", None), ("stray", None)]
    assert [d.detail.split(":")[0] for d in damage] == ["README.txt", "junk/"] and all("left in place" in d.detail for d in damage)


def test_non_part_names_inside_parts_are_strays_not_orphan_parts(cache):
    backend, c = cache
    (c / PARTS / "backup").mkdir()
    (c / PARTS / "part-1").mkdir()  # not a name part_id makes
    (c / PARTS / "list.txt").write_text("x")
    damage = verify_cache(c)
    assert report(damage) == [("stray", None)] * 3
    assert {d.detail.split(":")[0] for d in damage} == {"parts/backup/", "parts/part-1/", "parts/list.txt"}
    assert damaged_parts(damage) == set()


def test_sweep_removes_our_leftovers_but_never_a_stray(cache):
    from navcache.cache_specs.finalize import sweep

    backend, c = cache
    (c / PARTS / "backup").mkdir()
    (c / PARTS / "backup" / "keep.txt").write_text("a user's file")
    (c / "junk").mkdir()
    write_part(c / PARTS, part_id(7), "fp7", SPEC, DIMS, [make_episode(SPEC, DIMS, "x", 2, 5)], backend=backend)
    (c / PARTS / ".tmp-part-00009-123-abcd").mkdir()
    assert sweep(c, {part_id(i) for i in range(N_PARTS)}) == [part_id(7)]
    assert (c / PARTS / "backup" / "keep.txt").read_text() == "a user's file" and (c / "junk").is_dir()
    assert not (c / PARTS / ".tmp-part-00009-123-abcd").exists()
    assert report(verify_cache(c)) == [("stray", None)] * 2


def test_repair_reports_strays_and_leaves_them(cache, capsys):
    """``verify --repair`` on a cache whose only damage is a stray: nothing to rebuild, nothing
    deleted, the cache stays complete, and the exit code still says the folder is not clean."""
    from navcache.cache_specs.errors import EXIT_DAMAGE
    from navcache.pipeline.verify_repair import verify_and_repair

    backend, c = cache
    (c / "junk").mkdir()
    rc = verify_and_repair(c, None, repair=True, as_json=True)
    out = json.loads(capsys.readouterr().out)
    assert rc == EXIT_DAMAGE and out["repaired"] == {} and not out["ok"]
    assert out["caches"][str(c)] == ["stray: junk/: not part of a navcache cache; left in place, move or delete it by hand"]
    assert (c / "junk").is_dir() and (c / MANIFEST).exists()
