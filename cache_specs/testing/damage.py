"""Damage every backend must refuse to read as data, through every way into a cache.

Mixed into ``BackendConformance``: a small complete cache (three parts of equal-length episodes)
is built once per backend, copied for each test, damaged in one way, then read through one entry
point. Every damage must raise ``DamagedCache`` naming the damaged part and
``navcache verify --repair``; none may return zeros (zarr's fill value for a missing chunk) or
another part's rows. The undamaged copy must read back exactly, and episodes of intact parts must
still read from a cache with one damaged part.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from ..errors import DamagedCache
from ..layout import INDEX, MANIFEST, PART_JSON, PARTS, part_id
from ..manifest import MANIFEST_SHA_KEY, finalize_cache, manifest_checksum
from ..parts import EpisodeResult, write_part
from ..reader import open_cache
from ..spec import ArraySpec, CacheSpec

SPEC = CacheSpec("dmg_frames", 1, "frame", (ArraySpec("feat", "float32", (4,)), ArraySpec("idx", "int64", ())))
N_PARTS, PER_PART, FRAMES = 3, 2, 6
TARGET = part_id(1)  # the part each damage hits


def episode_id(p: int, i: int) -> str:
    return f"p{p}e{i}"


def episode_arrays(p: int, i: int) -> dict[str, np.ndarray]:
    """Nonzero everywhere, and different per episode: zeros or another episode's rows show."""
    k = 10 * p + i + 1
    f = np.arange(FRAMES)
    return {"feat": (k + f[:, None] / 10 + np.arange(4) / 100).astype(np.float32), "idx": (100 * k + f).astype(np.int64)}


def build(path: Path, backend: str) -> Path:
    """The damage suite's cache: ``N_PARTS`` parts of ``PER_PART`` episodes, 2 rows per chunk."""
    expected = {}
    for p in range(N_PARTS):
        results = [EpisodeResult(episode_id(p, i), episode_arrays(p, i)) for i in range(PER_PART)]
        write_part(path / PARTS, part_id(p), f"fp{p}", SPEC, {}, results, backend=backend, chunk_rows=2)
        expected[part_id(p)] = f"fp{p}"
    finalize_cache(path, expected, {"stage": "test", "backend": backend})
    return path


# -- the damages ---------------------------------------------------------------------------------


def data_file(part_dir: Path) -> Path:
    """The file holding array ``feat`` of the part: its zarr shard, or the part's HDF5 file."""
    if (part_dir / "data.h5").exists():
        return part_dir / "data.h5"
    shards = [p for p in (part_dir / "data.zarr" / "feat" / "c").rglob("*") if p.is_file()]
    assert len(shards) == 1, shards
    return shards[0]


def first_chunk_offset(part_dir: Path) -> int:
    """Byte offset of ``feat``'s first stored chunk inside ``data_file``."""
    f = data_file(part_dir)
    if f.suffix == ".h5":
        import h5py

        with h5py.File(f, "r") as h:
            return int(h["feat"].id.get_chunk_info(0).byte_offset)
    raw = f.read_bytes()
    n = (json.loads((part_dir / "data.zarr" / "feat" / "zarr.json").read_text())["chunk_grid"]["configuration"]["chunk_shape"][0]) // 2
    index = np.frombuffer(raw[-(16 * n + 4) : -4], "<u8").reshape(n, 2)  # zarr v3 shard index at the end
    return int(index[0, 0])


def _truncate(f: Path, size: int) -> None:
    with open(f, "r+b") as fh:
        fh.truncate(size)


def flip_byte(f: Path, offset: int) -> None:
    with open(f, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))


def rewrite_manifest(c: Path, edit: Callable[[dict], None]) -> None:
    """Edit the manifest and re-seal it (its own checksum recomputed): what a buggy writer would
    leave, so only the reader's cross-checks can catch the edit."""
    m = json.loads((c / MANIFEST).read_text())
    edit(m)
    m[MANIFEST_SHA_KEY] = manifest_checksum(m)
    (c / MANIFEST).write_text(json.dumps(m))


def swap_index_starts(c: Path) -> None:
    """The index puts the two episodes of ``TARGET`` at each other's rows (manifest re-sealed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(c / INDEX).to_pydict()
    rows = [i for i, p in enumerate(t["part"]) if p == TARGET]
    a, b = rows[:2]
    t["start"][a], t["start"][b] = t["start"][b], t["start"][a]
    buf = io.BytesIO()
    pq.write_table(pa.table(t, schema=pq.read_schema(c / INDEX)), buf)
    (c / INDEX).write_bytes(buf.getvalue())
    rewrite_manifest(c, lambda m: m.update(index_sha256=hashlib.sha256(buf.getvalue()).hexdigest()))


def drop_part_episode(c: Path) -> None:
    """``TARGET``'s part.json loses the index's first episode there (manifest re-recorded)."""
    pj = c / PARTS / TARGET / PART_JSON
    meta = json.loads(pj.read_text())
    meta["episodes"] = meta["episodes"][1:]
    pj.write_text(json.dumps(meta))
    sha = hashlib.sha256(pj.read_bytes()).hexdigest()
    rewrite_manifest(c, lambda m: m["parts"][TARGET].update(part_json_sha256=sha))


def swap_parts(c: Path) -> None:
    a, b, tmp = c / PARTS / part_id(0), c / PARTS / TARGET, c / PARTS / "swap"
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)


DAMAGES: dict[str, Callable[[Path], None]] = {
    "shard_deleted": lambda c: data_file(c / PARTS / TARGET).unlink(),
    "shard_emptied": lambda c: _truncate(data_file(c / PARTS / TARGET), 0),
    "shard_cut": lambda c: _truncate(data_file(c / PARTS / TARGET), data_file(c / PARTS / TARGET).stat().st_size // 2),
    "byte_flipped": lambda c: flip_byte(data_file(c / PARTS / TARGET), first_chunk_offset(c / PARTS / TARGET) + 1),
    "parts_swapped": swap_parts,
    "index_not_part": swap_index_starts,
    "part_not_index": drop_part_episode,
}

# -- the ways into a cache -------------------------------------------------------------------------


def _loader(mode: str, workers: int = 0):
    def read(c: Path) -> list:
        from ..streaming import make_loader

        loader = make_loader({"c": c}, {"c": ["feat"]}, batch_size=2, mode=mode, shuffle=False, num_workers=workers)
        return [b["c.feat"] for b in loader]

    return read


READS: dict[str, Callable[[Path], object]] = {
    "load": lambda c: open_cache(c).load("feat"),
    "getitem": lambda c: open_cache(c)[episode_id(1, 0)],
    "torch_dataset": lambda c: [x["feat"] for x in open_cache(c).torch_dataset(["feat"])],
    "torch_dataset_lazy": lambda c: [x["feat"] for x in open_cache(c).torch_dataset(["feat"], in_memory=False)],
    "loader_stream": _loader("stream"),
    "loader_memory": _loader("memory"),
    "loader_workers": _loader("stream", workers=1),  # reads in a forked worker: its error reaches the caller
}


class DamageConformance:
    """Every backend's caches must refuse damage on every read path. Subclasses set ``backend_name``."""

    backend_name: str = ""

    @pytest.fixture(scope="class")
    @classmethod
    def damage_template(cls, tmp_path_factory) -> Path:
        return build(tmp_path_factory.mktemp(f"damage_{cls.backend_name}") / "cache", cls.backend_name)

    @pytest.fixture
    def copy(self, damage_template, tmp_path) -> Path:
        shutil.copytree(damage_template, tmp_path / "cache")
        return tmp_path / "cache"

    @pytest.mark.parametrize("read", sorted(READS))
    @pytest.mark.parametrize("damage", sorted(DAMAGES))
    def test_damaged_part_raises_on_every_read(self, copy, damage, read):
        DAMAGES[damage](copy)
        hit = f"({part_id(0)}|{TARGET})" if damage == "parts_swapped" else TARGET  # a swap damages both
        with pytest.raises(DamagedCache, match=rf"part {hit} is damaged: .*navcache verify --repair") as e:
            READS[read](copy)
        assert str(copy) in str(e.value)

    @pytest.mark.parametrize("read", sorted(READS))
    def test_undamaged_copy_reads_back(self, copy, read):
        want = np.concatenate([episode_arrays(p, i)["feat"] for p in range(N_PARTS) for i in range(PER_PART)])
        got = READS[read](copy)
        if read == "getitem":
            np.testing.assert_array_equal(got["feat"], episode_arrays(1, 0)["feat"])
        else:
            got = got if isinstance(got, np.ndarray) else np.concatenate([np.asarray(x) for x in got])
            np.testing.assert_array_equal(got.reshape(want.shape), want)  # a loader's batches are [B, frames, 4]

    @pytest.mark.parametrize("damage", ["shard_deleted", "shard_emptied", "shard_cut", "byte_flipped"])
    def test_intact_parts_still_read(self, copy, damage):
        DAMAGES[damage](copy)
        c = open_cache(copy)
        for p in (0, 2):
            for i in range(PER_PART):
                np.testing.assert_array_equal(c[episode_id(p, i)]["feat"], episode_arrays(p, i)["feat"])
