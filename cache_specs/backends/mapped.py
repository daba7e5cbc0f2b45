"""Rows of an array whose chunks lie uncompressed in memory-mapped files: reads are memcpy.

Used by both backends for uncompressed chunks (``zarr-raw``, ``hdf5-raw``, any zarr array whose
codec chain is plain ``bytes``, any unfiltered HDF5 dataset). A ``preadv`` per chunk costs a
system call and a kernel copy, and HDF5's own read path ~150 us per call whatever its size, which
held random reads near 0.1-0.35x a numpy memmap (``bench/reader_random_access.py``); copying out of
a mapping of the same file bytes is what the memmap does.

Why hand-rolled: neither zarr nor h5py exposes its chunks as mapped memory, and ``np.memmap`` of
a whole file cannot skip the checksum trailer after every chunk. The geometry comes from each
format's own index (zarr's shard index, HDF5's chunk table), so no format is parsed here.

Damage model (see ``cache_specs.integrity``): the map opens only after every chunk extent the
index names was found inside the file (a file cut before the map opened raises, never SIGBUS);
each chunk's stored checksum is verified the first time a read touches it in this open part (a
per-chunk bitmap), not on every read. Reads copy into the caller's array: no view into a map
that ``close`` may unmap ever leaves this module.
"""
from __future__ import annotations

import mmap
import os
from typing import Callable, Sequence

import numpy as np

#: ``check(stored chunk bytes, checksum included) -> bool``; its ``__name__`` names the checksum in errors
Check = Callable[[np.ndarray], bool]


def map_file(path: str, need: int) -> tuple[mmap.mmap, np.ndarray]:
    """(the map, its bytes as a uint8 array) of file ``path``, read-only; ValueError when the file
    holds fewer than ``need`` bytes (cut short: reading a mapped page past its end is SIGBUS).
    The descriptor closes at once: a map holds no file descriptor."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size < need:
            raise ValueError(f"{path}: truncated ({size} bytes, its index names chunks up to byte {need})")
        m = mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else None
    finally:
        os.close(fd)
    return m, (np.frombuffer(m, np.uint8) if m is not None else np.zeros(0, np.uint8))


class MappedRows:
    """One array (rows of ``row_bytes`` bytes, ``chunk_rows`` a chunk) read from mapped bytes.

    ``chunks``: per chunk, (byte array of its mapped file, offset of its first byte), or None for
    a chunk never written (reads as ``fill_row``, uint8 [row_bytes]). Every stored chunk holds
    ``stored`` bytes: ``chunk_rows * row_bytes`` of rows (edge chunks padded, as both formats
    store them), then its checksum when ``check`` is given.
    """

    def __init__(self, where: str, dtype: np.dtype, rows: int, row_bytes: int, chunk_rows: int,
                 chunks: Sequence[tuple[np.ndarray, int] | None], stored: int, check: Check | None, fill_row: np.ndarray):
        self.where, self.dtype, self.rows, self.row_bytes, self.chunk_rows = where, np.dtype(dtype), rows, row_bytes, chunk_rows
        self._chunks, self._stored, self._check, self._fill = list(chunks), stored, check, fill_row
        # 1 = nothing to verify (checked, never written, or no checksum stored)
        self._ok = bytearray(1 if (c is None or check is None) else 0 for c in self._chunks)
        self._unchecked = 0 in self._ok
        self._grid = self._regular_grid()

    def _regular_grid(self) -> np.ndarray | None:
        """[n_chunks, chunk_rows, row_bytes] view of the rows when every chunk is stored in one file
        at a constant stride (what both writers produce): a run of rows is then one strided copy."""
        if not self._chunks or any(c is None for c in self._chunks):
            return None
        buf, first = self._chunks[0]
        n = len(self._chunks)
        stride = self._chunks[1][1] - first if n > 1 else self._stored
        if stride < self.chunk_rows * self.row_bytes or any(b is not buf or o != first + k * stride for k, (b, o) in enumerate(self._chunks)):
            return None
        return np.lib.stride_tricks.as_strided(buf[first:], (n, self.chunk_rows, self.row_bytes), (stride, self.row_bytes, 1), writeable=False)

    def read_into(self, lo: int, hi: int, out: np.ndarray) -> None:
        """Rows ``lo:hi`` into C-contiguous ``out`` [hi - lo, *row_shape] of ``dtype``."""
        if hi > lo:
            self.read_runs([(lo, hi, 0)], out)

    def read_runs(self, runs: Sequence[tuple[int, int, int]], out: np.ndarray) -> None:
        """Rows ``lo:hi`` into ``out[dst : dst + hi - lo]`` for each ``(lo, hi, dst)`` of ``runs``
        (``out``: C-contiguous [n, *row_shape] of ``dtype``): per run at most three numpy copies (a
        chunk's tail, whole chunks, a chunk's head) on the regular layout. One call per array of a
        batch: the Python per run is a few comparisons and slices."""
        if not len(out) or not self.row_bytes:
            return
        d = out.reshape(len(out), -1).view(np.uint8)
        if d.shape[1] != self.row_bytes:
            raise ValueError(f"{self.where}: out rows hold {d.shape[1]} bytes, stored rows {self.row_bytes}")
        c, g, ok = self.chunk_rows, self._grid, self._ok
        for lo, hi, dst in runs:
            if hi <= lo:
                continue
            if not (0 <= lo and hi <= self.rows and 0 <= dst and dst + hi - lo <= len(d)):
                raise IndexError(f"{self.where}: rows {lo}:{hi} into rows {dst}: outside 0:{self.rows} or the {len(d)}-row output")
            if self._unchecked and ok.find(0, lo // c, (hi - 1) // c + 1) >= 0:
                self._verify(lo // c, (hi - 1) // c + 1)
            if g is None:
                self._per_chunk(lo, hi, d[dst : dst + hi - lo])
                continue
            a = lo
            if a % c:  # the tail of a chunk
                b = min(hi, a - a % c + c)
                d[dst : dst + b - a] = g[a // c, a % c : a % c + b - a]
                a = b
            m = (hi - a) // c
            if m == 1:  # one whole chunk (an episode of a chunk's rows)
                d[dst + a - lo : dst + a - lo + c] = g[a // c]
                a += c
            elif m:  # whole chunks: one strided copy
                d[dst + a - lo : dst + a - lo + m * c].reshape(m, c, -1)[...] = g[a // c : a // c + m]
                a += m * c
            if a < hi:  # the head of a chunk
                d[dst + a - lo : dst + hi - lo] = g[a // c, : hi - a]

    def _per_chunk(self, lo: int, hi: int, d: np.ndarray) -> None:
        """``read_into`` for chunks at irregular places (or never written): one copy per chunk."""
        c, rb = self.chunk_rows, self.row_bytes
        for k in range(lo // c, (hi - 1) // c + 1):
            a, b = max(lo, k * c), min(hi, k * c + c)
            entry = self._chunks[k]
            if entry is None:
                d[a - lo : b - lo] = self._fill
            else:
                buf, off = entry
                d[a - lo : b - lo] = buf[off + (a - k * c) * rb : off + (b - k * c) * rb].reshape(b - a, rb)

    def _verify(self, k0: int, k1: int) -> None:
        """Check the stored checksum of chunks ``k0:k1`` not yet checked; ValueError on a mismatch."""
        for k in range(k0, k1):
            if not self._ok[k]:
                buf, off = self._chunks[k]
                if not self._check(buf[off : off + self._stored]):
                    raise ValueError(f"{self.where}: chunk at rows {k * self.chunk_rows}:{(k + 1) * self.chunk_rows}: "
                                     f"stored and computed {self._check.__name__} differ (corrupt chunk)")
                self._ok[k] = 1
        self._unchecked = 0 in self._ok

    def close(self) -> None:
        """Drop this array's views of its map (the owner unmaps)."""
        self._chunks, self._grid = [], None
