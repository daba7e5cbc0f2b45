"""zarr v3 backend: one sharded array per name, one shard per array and part.

``"zarr"`` compresses chunks with zstd; ``"zarr-raw"`` stores them uncompressed (crc32c only): on
float16 encoder features zstd saves under 10% of the bytes and costs about 3x in read speed
(``bench/streaming_loader.py``), so a cache streamed from disk every epoch may prefer raw chunks.
Readers need not know which: zarr records the codecs in the array metadata.

A part is written by one process into its own temporary folder, so no two writers ever share a
shard (zarr silently drops chunks when two processes write one shard).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np


class _ZarrPart:
    def __init__(self, group):
        self._g = group
        self._arrays: dict = {}  # opening an array reads its zarr.json: once per part, not per read

    def names(self) -> list[str]:
        return sorted(k for k, _ in self._g.arrays())

    def __getitem__(self, name: str):
        if name not in self._arrays:
            self._arrays[name] = self._g[name]
        return self._arrays[name]

    def chunk_rows(self, name: str) -> int:
        """Rows per (inner) chunk of array ``name``: the unit a read decodes."""
        return int(self[name].chunks[0])

    def read_into(self, name: str, lo: int, hi: int, out: np.ndarray) -> None:
        """Rows ``lo:hi`` of ``name`` decoded straight into ``out`` (C-contiguous, e.g. shared memory)."""
        from zarr.core.buffer.cpu import NDBuffer

        if hi > lo:
            self[name].get_basic_selection((slice(lo, hi),), out=NDBuffer.from_numpy_array(out))

    def close(self) -> None:
        pass


class ZarrBackend:
    data_name = "data.zarr"

    def __init__(self, zstd_level: int | None = 3):
        """``zstd_level=None``: no compression (the ``"zarr-raw"`` backend)."""
        self.zstd_level = zstd_level
        self.name = "zarr" if zstd_level is not None else "zarr-raw"

    def write(self, part_dir: Path, arrays: Mapping[str, np.ndarray], chunk_rows: int) -> None:
        import zarr
        from zarr.codecs import Crc32cCodec, ZstdCodec
        from zarr.storage import LocalStore

        group = zarr.open_group(store=LocalStore(part_dir / self.data_name), mode="w-", zarr_format=3)
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            rows = arr.shape[0]
            chunk = (max(1, min(chunk_rows, rows)),) + tuple(max(1, d) for d in arr.shape[1:])
            # One shard holds the whole array: the part is the unit of writing, so a shard never
            # outlives or spans writers.
            shard_rows = max(chunk[0], -(-rows // chunk[0]) * chunk[0])
            z = group.create_array(
                name,
                shape=arr.shape,
                dtype=arr.dtype,
                chunks=chunk,
                shards=(shard_rows,) + chunk[1:],
                # crc32c per chunk: a flipped byte fails the read instead of returning wrong values
                compressors=((ZstdCodec(level=self.zstd_level),) if self.zstd_level is not None else ()) + (Crc32cCodec(),),
                fill_value=0,
            )
            if arr.size:
                z[...] = arr

    def open(self, part_dir: Path) -> _ZarrPart:
        import zarr
        from zarr.storage import LocalStore

        store = LocalStore(part_dir / self.data_name, read_only=True)
        return _ZarrPart(zarr.open_group(store=store, mode="r", zarr_format=3))
