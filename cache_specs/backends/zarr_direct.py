"""Row-range reads of an uncompressed sharded zarr v3 array straight into the caller's buffer.

Why hand-rolled: zarr's sync read path hops to its event loop per call, reads every inner chunk of
a shard into a fresh bytes object, checks its crc32c, then copies it into ``out``: measured 0.79
CPU-s per GB on warm pages against 0.15 for a plain ``read()`` of the same files, which made the
streaming loader CPU-bound on 2 cores. For the layout our writer makes with ``"zarr-raw"``
(``sharding_indexed`` over row-only chunks, inner codecs ``bytes`` [+ ``crc32c``], index at the
end with ``bytes`` + ``crc32c``) the on-disk format is fixed by the zarr v3 sharding spec, so a
read is: the shard index (checked), then one ``preadv`` per chunk into the rows of ``out`` plus a
4-byte crc slot, then crc32c (google-crc32c, the library zarr itself uses) over those rows. Every
checksum zarr checks is still checked; any other layout (compressed chunks, other codecs, index at
the start, chunks split along other axes) returns ``False`` and the caller uses zarr.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_EMPTY = 2**64 - 1  # offset and length of a chunk that was never written (reads as fill_value)


class ShardLayout:
    """What a direct read needs of one array: the shard files' paths and the chunk geometry."""

    def __init__(self, root: Path, path: str, metadata, shape: tuple, dtype: np.dtype):
        self.root, self.path, self.meta = root, path, metadata
        self.shard_rows = int(metadata.chunk_grid.chunk_shape[0])
        self.chunk_rows = int(metadata.codecs[0].chunk_shape[0])
        self.crc = len(metadata.codecs[0].codecs) == 2
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self.rows, self.ndim = int(shape[0]), len(shape)
        self.fill = metadata.fill_value
        self._index: dict[int, np.ndarray] = {}

    @classmethod
    def of(cls, root: Path, path: str, meta) -> "ShardLayout | None":
        """The layout of array ``path`` under the local zarr store ``root`` (``meta``: its
        ``ArrayV3Metadata``) if a direct read is possible, else ``None``."""
        try:
            from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
            from zarr.codecs.sharding import ShardingCodecIndexLocation

            if len(meta.codecs) != 1 or not isinstance(meta.codecs[0], ShardingCodec):
                return None
            sc = meta.codecs[0]
            dtype = np.dtype(meta.dtype.to_native_dtype())
            shape, shard, chunk = tuple(meta.shape), tuple(meta.chunk_grid.chunk_shape), tuple(sc.chunk_shape)
        except (ImportError, AttributeError, TypeError):
            return None
        little = dtype.itemsize == 1 or dtype.byteorder == "<" or (dtype.byteorder == "=" and np.little_endian)
        bytes_ok = lambda c: isinstance(c, BytesCodec) and (dtype.itemsize == 1 or getattr(c.endian, "value", c.endian) == "little")  # noqa: E731
        inner = sc.codecs
        ok = (
            little and len(shape) >= 1 and not dtype.hasobject
            and shard[1:] == shape[1:] and chunk[1:] == shape[1:] and shard[0] % chunk[0] == 0
            and len(inner) in (1, 2) and bytes_ok(inner[0]) and (len(inner) == 1 or isinstance(inner[1], Crc32cCodec))
            and len(sc.index_codecs) == 2 and bytes_ok(sc.index_codecs[0]) and isinstance(sc.index_codecs[1], Crc32cCodec)
            and sc.index_location == ShardingCodecIndexLocation.end
        )
        return cls(Path(root), path, meta, shape, dtype) if ok else None

    def _shard_file(self, s: int) -> Path:
        return self.root / self.path / self.meta.encode_chunk_key((s,) + (0,) * (self.ndim - 1))

    def _shard_index(self, s: int, fd: int) -> np.ndarray:
        """[chunks per shard, 2] uint64 (offset, nbytes), its crc32c checked; cached per shard."""
        import google_crc32c

        if s not in self._index:
            n = self.shard_rows // self.chunk_rows
            size = os.fstat(fd).st_size
            raw = os.pread(fd, 16 * n + 4, size - 16 * n - 4)
            if len(raw) != 16 * n + 4 or google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
                raise ValueError(f"{self._shard_file(s)}: shard index checksum mismatch (corrupt or truncated shard)")
            self._index[s] = np.frombuffer(raw[:-4], "<u8").reshape(n, 2)
        return self._index[s]

    def read_into(self, lo: int, hi: int, out: np.ndarray) -> None:
        """Rows ``lo:hi`` into C-contiguous ``out`` [hi - lo, ...]: whole chunks are read straight
        into ``out``; a chunk cut by ``lo``/``hi`` is read whole (its checksum covers all of it)."""
        dst = out.reshape(-1).view(np.uint8)
        if dst.nbytes != (hi - lo) * self.row_bytes:
            raise ValueError(f"out holds {dst.nbytes} bytes, rows {lo}:{hi} need {(hi - lo) * self.row_bytes}")
        c = self.chunk_rows
        for s in range(lo // self.shard_rows, -(-hi // self.shard_rows)):
            path = self._shard_file(s)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # a shard never written: every row is fill_value
                a, b = max(lo, s * self.shard_rows), min(hi, (s + 1) * self.shard_rows)
                out[a - lo : b - lo] = self.fill
                continue
            try:
                index = self._shard_index(s, fd)
                first = s * self.shard_rows
                for k in range(len(index)):
                    r0, r1 = first + k * c, min(first + (k + 1) * c, self.rows)
                    a, b = max(lo, r0), min(hi, r1)
                    if a < b:
                        self._chunk(fd, path, index[k], r0, r1, a, b, out[a - lo : b - lo], dst[(a - lo) * self.row_bytes : (b - lo) * self.row_bytes])
            finally:
                os.close(fd)

    def _chunk(self, fd: int, path: Path, entry: np.ndarray, r0: int, r1: int, a: int, b: int, rows: np.ndarray, dst: np.ndarray) -> None:
        import google_crc32c

        off, nbytes = int(entry[0]), int(entry[1])
        if off == _EMPTY and nbytes == _EMPTY:
            rows[...] = self.fill
            return
        # zarr stores edge chunks at full chunk size; rows past the array's end are padding
        full = self.chunk_rows * self.row_bytes
        if nbytes != full + 4 * self.crc:
            raise ValueError(f"{path}: chunk at rows {r0}:{r1} holds {nbytes} bytes, expected {full + 4 * self.crc} (not a raw chunk)")
        whole = (a, b) == (r0, r0 + self.chunk_rows)
        body = dst if whole else np.empty(full, np.uint8)
        crc = bytearray(4)
        got = os.preadv(fd, [body, crc] if self.crc else [body], off)
        if got != nbytes:  # regular files return short reads only at EOF
            raise ValueError(f"{path}: chunk at rows {r0}:{r1} truncated ({got} of {nbytes} bytes)")
        if self.crc and google_crc32c.value(body) != int.from_bytes(crc, "little"):
            raise ValueError(f"{path}: chunk at rows {r0}:{r1}: stored and computed crc32c differ (corrupt chunk)")
        if not whole:
            dst[...] = body[(a - r0) * self.row_bytes : (b - r0) * self.row_bytes]
