"""zarr v3 backend: one sharded array per name, one shard per array and part.

``"zarr"`` compresses chunks with zstd; ``"zarr-raw"`` stores them uncompressed (crc32c only): on
float16 encoder features zstd saves under 10% of the bytes and costs about 3x in read speed
(``bench/streaming_loader.py``; decoding alone caps random reads near 0.1x a memmap,
``bench/reader_random_access.py``), so a cache streamed from disk every epoch may prefer raw chunks.
Both are read through ``zarr_direct`` (no zarr event loop per read): raw chunks from memory-mapped
shards (``zarr_direct.ShardLayout.map_raw``), zstd ones with ``preadv`` + decode.
Readers need not know which: zarr records the codecs in the array metadata.

A part is written by one process into its own temporary folder, so no two writers ever share a
shard (zarr silently drops chunks when two processes write one shard).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Mapping

import numpy as np

from .mapped import MappedRows
from .zarr_direct import ShardLayout


@functools.lru_cache(maxsize=512)
def _parse_metadata(text: str):
    """zarr's ``ArrayV3Metadata`` of a ``zarr.json`` text. Memoised on the text: parsing costs
    ~0.35 ms, once per array of every part a reader opens, and the parts of a cache repeat a few
    texts (same row count, same chunking). The result is a frozen dataclass, safe to share."""
    from zarr.core.metadata.v3 import ArrayV3Metadata

    return ArrayV3Metadata.from_dict(json.loads(text))


class _ZarrPart:
    """An opened part. The zarr group is opened on first need: a streaming read of raw chunks
    needs only each array's ``zarr.json`` (parsed here, no event-loop hop), and opening a group
    plus its arrays through zarr's sync API costs ~1 ms of CPU per part."""

    def __init__(self, root: Path):
        self._root = root
        self._group = None
        self._arrays: dict = {}  # opening an array reads its zarr.json: once per part, not per read
        self._meta: dict = {}  # name -> zarr ArrayV3Metadata
        self._direct: dict = {}  # name -> ShardLayout, or None where zarr must decode
        self._rows: dict = {}  # name -> what reads it: MappedRows (raw chunks), ShardLayout (zstd), None (zarr)

    def _g(self):
        if self._group is None:
            import zarr
            from zarr.storage import LocalStore

            self._group = zarr.open_group(store=LocalStore(self._root, read_only=True), mode="r", zarr_format=3)
        return self._group

    def names(self) -> list[str]:
        return sorted(k for k, _ in self._g().arrays())

    def __getitem__(self, name: str):
        if name not in self._arrays:
            self._arrays[name] = self._g()[name]
        return self._arrays[name]

    def metadata(self, name: str):
        if name not in self._meta:
            try:
                text = (self._root / name / "zarr.json").read_text()
            except FileNotFoundError:
                raise KeyError(f"no array {name!r} in {self._root}") from None
            self._meta[name] = _parse_metadata(text)
        return self._meta[name]

    def chunk_rows(self, name: str) -> int:
        """Rows per (inner) chunk of array ``name``: the unit a read decodes."""
        m = self.metadata(name)
        codec = m.codecs[0] if len(m.codecs) == 1 and hasattr(m.codecs[0], "chunk_shape") else None
        return int((codec.chunk_shape if codec is not None else m.chunk_grid.chunk_shape)[0])

    def read_into(self, name: str, lo: int, hi: int, out: np.ndarray) -> None:
        """Rows ``lo:hi`` of ``name`` decoded straight into ``out`` (C-contiguous, e.g. shared memory)."""
        if hi <= lo:
            return
        r = self._rows[name] if name in self._rows else self._reader(name)
        if r is not None and out.flags.c_contiguous and out.dtype == r.dtype:
            r.read_into(lo, hi, out)  # our writer's layouts: no zarr event loop (see zarr_direct)
        else:
            from zarr.core.buffer.cpu import NDBuffer

            self[name].get_basic_selection((slice(lo, hi),), out=NDBuffer.from_numpy_array(out))

    def read_runs(self, name: str, runs, out: np.ndarray) -> None:
        """``read_into`` of each ``(lo, hi, dst)`` of ``runs`` into ``out[dst : dst + hi - lo]``."""
        r = self._rows[name] if name in self._rows else self._reader(name)
        if isinstance(r, MappedRows) and out.flags.c_contiguous and out.dtype == r.dtype:
            r.read_runs(runs, out)
        else:
            for lo, hi, dst in runs:
                self.read_into(name, lo, hi, out[dst : dst + hi - lo])

    def _reader(self, name: str):
        """What reads ``name``: its mapped raw chunks, its ``ShardLayout`` (zstd), or None (zarr).
        Opened per process on first use (a forked reader opens its own, see ``CacheReader``)."""
        direct = self._direct[name] = ShardLayout.of(self._root, name, self.metadata(name))
        r = direct.map_raw() if direct is not None else None
        self._rows[name] = r if r is not None else direct
        return self._rows[name]

    def close(self) -> None:
        for r in self._rows.values():
            if isinstance(r, MappedRows):
                r.close()  # its views first: a map with views alive cannot unmap
        self._rows.clear()
        for layout in self._direct.values():
            if layout is not None:
                layout.close()
        self._direct.clear()


class ZarrBackend:
    data_name = "data.zarr"

    def __init__(self, zstd_level: int | None = 3):
        """``zstd_level=None``: no compression (the ``"zarr-raw"`` backend)."""
        self.zstd_level = zstd_level
        self.name = "zarr" if zstd_level is not None else "zarr-raw"

    def write(self, part_dir: Path, arrays: Mapping[str, np.ndarray], chunk_rows: int | Mapping[str, int]) -> None:
        """``chunk_rows``: rows per chunk, one for every array or {array name: rows}.

        One shard holds each whole array: the part is the unit of writing, so a shard never
        outlives or spans writers. Chunks carry a crc32c (a flipped byte fails the read instead of
        returning wrong values). Written by ``zarr_shards`` (zarr's own bytes, without its per-call
        event-loop cost)."""
        from .zarr_shards import write_group

        chunks = {name: chunk_rows if isinstance(chunk_rows, int) else chunk_rows[name] for name in arrays}
        write_group(part_dir / self.data_name, arrays, chunks, self.zstd_level)

    def open(self, part_dir: Path) -> _ZarrPart:
        root = part_dir / self.data_name
        if not (root / "zarr.json").is_file():
            raise FileNotFoundError(f"no zarr group at {root}")
        return _ZarrPart(root)
