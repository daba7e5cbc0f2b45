"""HDF5 backends: one ``data.h5`` file per part, chunked datasets with fletcher32 checksums.

``"hdf5"`` compresses chunks with shuffle + gzip (portable everywhere); ``"hdf5-raw"`` stores them
uncompressed: gzip decodes at ~100-200 MB/s on one core, which caps random reads of fp16 features
(which it shrinks by under 10%) near 0.02x a memmap of the same bytes (``bench/reader_random_access.py``).
Readers need not know which: HDF5 records the filters per dataset.

Datasets stored without a filter, or with fletcher32 alone (``hdf5-raw``), are read from a memory
map of the file (``mapped.MappedRows``) at the places HDF5's own index gives (``get_offset`` for a
contiguous dataset, the chunk table for a chunked one): HDF5's read path costs ~150 us per call
whatever its size. Every chunk extent is checked against the file's size before the map is read,
and each chunk's fletcher32 is verified (with numcodecs' ``Fletcher32``, HDF5's algorithm) on its
first read in the open part. Compressed datasets keep HDF5's hyperslab read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from .mapped import MappedRows, map_file


class _H5Part:
    def __init__(self, path: Path):
        import h5py

        # a small chunk cache: a reader keeps many parts open, and HDF5's default (1 MiB per
        # dataset) would hold up to that per array of each; reads are chunk-aligned anyway
        self._path = path
        self._f = h5py.File(path, "r", rdcc_nbytes=1 << 18)
        self._ds: dict = {}  # name -> h5py Dataset: looking one up by name costs more than a small read
        self._rows: dict = {}  # name -> MappedRows, or None where HDF5 must read (filters)
        self._map = None  # (mmap, its bytes) of the file, opened on the first mapped dataset

    def names(self) -> list[str]:
        return sorted(self._f.keys())

    def __getitem__(self, name: str):
        if name not in self._ds:
            self._ds[name] = self._f[name]
        return self._ds[name]

    def chunk_rows(self, name: str) -> int:
        """Rows per chunk of dataset ``name`` (all rows when stored contiguous): the unit a read decodes."""
        d = self[name]
        return int(d.chunks[0]) if d.chunks else max(1, int(d.shape[0]))

    def read_into(self, name: str, lo: int, hi: int, out: np.ndarray) -> None:
        """Rows ``lo:hi`` of ``name`` decoded straight into ``out`` (C-contiguous, e.g. shared memory).

        h5py's low-level hyperslab read: ``Dataset.read_direct`` builds its selection in Python
        and cost ~90 us a call, more than reading a 256 KB chunk."""
        import h5py

        if hi <= lo:
            return
        r = self._rows[name] if name in self._rows else self._mapped(name)
        if r is not None and out.flags.c_contiguous and out.dtype == r.dtype and 0 <= lo < hi <= r.rows:
            r.read_into(lo, hi, out)
            return
        d = self[name]
        if not 0 <= lo < hi <= d.shape[0] or out.shape != (hi - lo,) + d.shape[1:] or not out.flags.c_contiguous:
            d.read_direct(out, np.s_[lo:hi])  # h5py's checks and messages for anything unusual
            return
        fspace = d.id.get_space()
        fspace.select_hyperslab((lo,) + (0,) * (d.ndim - 1), out.shape)
        d.id.read(h5py.h5s.create_simple(out.shape), fspace, out)

    def read_runs(self, name: str, runs, out: np.ndarray) -> None:
        """``read_into`` of each ``(lo, hi, dst)`` of ``runs`` into ``out[dst : dst + hi - lo]``."""
        r = self._rows[name] if name in self._rows else self._mapped(name)
        if r is not None and out.flags.c_contiguous and out.dtype == r.dtype:
            r.read_runs(runs, out)
        else:
            for lo, hi, dst in runs:
                self.read_into(name, lo, hi, out[dst : dst + hi - lo])

    def _mapped(self, name: str) -> MappedRows | None:
        """``name``'s rows read from the mapped file, or None where HDF5 must decode (a filter other
        than fletcher32, another byte order, a chunk HDF5 skipped a filter on, compact storage).
        ValueError when a stored chunk's extent is not inside the file (truncated)."""
        self._rows[name] = r = _map_dataset(self[name], self._file_bytes, f"{self._path}:{name}")
        return r

    def _file_bytes(self, need: int) -> np.ndarray:
        """The file's mapped bytes (mapped once per open part); ValueError when fewer than ``need``."""
        if self._map is None:
            self._map = map_file(str(self._path), 0)
        if len(self._map[1]) < need:
            raise ValueError(f"{self._path}: truncated ({len(self._map[1])} bytes, its chunk table names chunks up to byte {need})")
        return self._map[1]

    def close(self) -> None:
        for r in self._rows.values():
            if r is not None:
                r.close()  # its views first: a map with views alive cannot unmap
        self._rows.clear()
        if self._map is not None and self._map[0] is not None:
            m, self._map = self._map[0], None
            try:
                m.close()
            except BufferError:  # a read still holds a view: the map goes when its last view does
                pass
        self._f.close()


def _map_dataset(d, file_bytes, where: str) -> MappedRows | None:
    """``MappedRows`` over dataset ``d``'s stored bytes (``file_bytes(need)``: the file's mapped
    bytes, ValueError when shorter than ``need``), or None when HDF5 must read it."""
    import h5py

    dtype = d.dtype
    if d.ndim < 1 or dtype.kind not in "biufc" or (dtype.itemsize > 1 and dtype.byteorder == ">") or (dtype.byteorder == "=" and not np.little_endian):
        return None
    plist = d.id.get_create_plist()
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    if filters not in ([], [h5py.h5z.FILTER_FLETCHER32]):
        return None
    rows = int(d.shape[0])
    row_bytes = int(np.prod(d.shape[1:], dtype=np.int64)) * dtype.itemsize
    fill = np.full(row_bytes // dtype.itemsize, d.fillvalue, dtype).view(np.uint8)
    layout = plist.get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        off = d.id.get_offset()
        chunks = [None] if off is None else [(file_bytes(off + rows * row_bytes), off)]
        return MappedRows(where, dtype, rows, row_bytes, max(1, rows), chunks, rows * row_bytes, None, fill)
    if layout != h5py.h5d.CHUNKED or tuple(d.chunks[1:]) != tuple(d.shape[1:]):
        return None
    c = int(d.chunks[0])
    fletcher = bool(filters)
    stored = c * row_bytes + 4 * fletcher
    table: dict[int, tuple[int, int, int]] = {}

    def visit(info) -> None:
        table[info.chunk_offset[0] // c] = (info.byte_offset, info.size, info.filter_mask)

    if hasattr(d.id, "chunk_iter"):  # HDF5 >= 1.12.3: the whole table in one call
        d.id.chunk_iter(visit)
    else:
        for i in range(d.id.get_num_chunks()):
            visit(d.id.get_chunk_info(i))
    if any(mask or size != stored for off, size, mask in table.values()):
        return None  # a filter skipped, or not the size a raw chunk has: HDF5 knows what it is
    buf = file_bytes(max((off + size for off, size, _ in table.values()), default=0))
    chunks = [(buf, table[k][0]) if k in table else None for k in range(-(-rows // c))]
    return MappedRows(where, dtype, rows, row_bytes, c, chunks, stored, fletcher32 if fletcher else None, fill)


def fletcher32(stored: np.ndarray) -> bool:
    """A chunk's bytes followed by their fletcher32 (HDF5's filter output) agree."""
    from numcodecs import Fletcher32

    try:
        Fletcher32().decode(stored)
    except (RuntimeError, ValueError):
        return False
    return True


class HDF5Backend:
    data_name = "data.h5"

    def __init__(self, gzip_level: int | None = 4):
        """``gzip_level=None``: no compression (the ``"hdf5-raw"`` backend)."""
        self.gzip_level = gzip_level
        self.name = "hdf5" if gzip_level is not None else "hdf5-raw"

    def write(self, part_dir: Path, arrays: Mapping[str, np.ndarray], chunk_rows: int | Mapping[str, int]) -> None:
        """``chunk_rows``: rows per chunk, one for every array or {array name: rows}."""
        import h5py

        with h5py.File(part_dir / self.data_name, "w-") as f:
            for name, arr in arrays.items():
                arr = np.ascontiguousarray(arr)
                rows = chunk_rows if isinstance(chunk_rows, int) else chunk_rows[name]
                kw = {}
                if arr.size:
                    kw = dict(chunks=(max(1, min(rows, arr.shape[0])),) + arr.shape[1:],
                              fletcher32=True)  # HDF5's own per-chunk checksum: a flipped byte fails loudly on read
                    if self.gzip_level is not None:
                        kw.update(compression="gzip", compression_opts=self.gzip_level, shuffle=True)
                f.create_dataset(name, data=arr, **kw)

    def open(self, part_dir: Path) -> _H5Part:
        return _H5Part(part_dir / self.data_name)
