"""``zarr_shards`` writes what zarr itself writes, byte for byte: every file of a part's group
(group and array ``zarr.json``, each shard) against zarr's own ``create_array`` + ``z[...] = a``
of the same arrays, over edge chunks, chunks left out (all fill value), -0.0 and NaN (stored),
bool / int / float dtypes, zero rows and rows fewer than a chunk; and zarr reads it back."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.storage import LocalStore

from navcache.cache_specs.backends.zarr_shards import write_group


def zarr_write(root: Path, arrays: dict, chunks: dict, level: int | None) -> None:
    """The reference: the layout written through zarr's public API."""
    group = zarr.open_group(store=LocalStore(root), mode="w-", zarr_format=3)
    for name, arr in arrays.items():
        rows = arr.shape[0]
        chunk = (max(1, min(chunks[name], rows)),) + tuple(max(1, d) for d in arr.shape[1:])
        z = group.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=chunk,
                               shards=(max(chunk[0], -(-rows // chunk[0]) * chunk[0]),) + chunk[1:],
                               compressors=((ZstdCodec(level=level),) if level is not None else ()) + (Crc32cCodec(),), fill_value=0)
        if arr.size:
            z[...] = arr


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def cases() -> dict[str, tuple[dict, dict]]:
    rng = np.random.default_rng(0)
    f16 = rng.standard_normal((128, 4, 4, 16)).astype(np.float16)
    half_empty = f16.copy()
    half_empty[:64] = 0  # the first chunk is all fill value: left out
    signed = np.zeros((64, 8), np.float32)
    signed[3, 1], signed[7, 7] = -0.0, np.nan  # -0.0 is not the fill value bitwise; NaN neither
    flags = np.zeros(100, bool)
    flags[70] = True
    return {
        "two full chunks": ({"patch_pooled": f16, "cls": rng.standard_normal((128, 16)).astype(np.float16)}, {"patch_pooled": 64, "cls": 64}),
        "edge chunk": ({"x": rng.standard_normal((100, 8)).astype(np.float32)}, {"x": 64}),
        "a chunk left out": ({"x": half_empty}, {"x": 64}),
        "every chunk left out": ({"x": np.zeros((96, 3), np.float16)}, {"x": 32}),
        "signed zero and nan": ({"x": signed}, {"x": 16}),
        "bool and int": ({"padded": flags, "frame_index": np.arange(100, dtype=np.int64)}, {"padded": 32, "frame_index": 64}),
        "zero rows": ({"x": np.zeros((0, 4), np.float32)}, {"x": 64}),
        "fewer rows than a chunk": ({"x": rng.standard_normal((5, 3)).astype(np.float64)}, {"x": 64}),
    }


@pytest.mark.parametrize("level", [3, None], ids=["zstd", "raw"])
@pytest.mark.parametrize("case", list(cases()))
def test_every_file_is_what_zarr_writes(tmp_path, case, level):
    arrays, chunks = cases()[case]
    zarr_write(tmp_path / "zarr", arrays, chunks, level)
    write_group(tmp_path / "ours", arrays, chunks, level)
    theirs, ours = files(tmp_path / "zarr"), files(tmp_path / "ours")
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        assert ours[name] == theirs[name], name
    group = zarr.open_group(store=LocalStore(tmp_path / "ours", read_only=True), mode="r", zarr_format=3)
    for name, arr in arrays.items():
        np.testing.assert_array_equal(group[name][...], arr)
