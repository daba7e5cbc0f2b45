"""HDF5 backends: one ``data.h5`` file per part, chunked datasets with fletcher32 checksums.

``"hdf5"`` compresses chunks with shuffle + gzip (portable everywhere); ``"hdf5-raw"`` stores them
uncompressed: gzip decodes at ~100-200 MB/s on one core, which caps random reads of fp16 features
(which it shrinks by under 10%) near 0.02x a memmap of the same bytes (``bench/reader_random_access.py``).
Readers need not know which: HDF5 records the filters per dataset.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np


class _H5Part:
    def __init__(self, path: Path):
        import h5py

        # a small chunk cache: a reader keeps many parts open, and HDF5's default (1 MiB per
        # dataset) would hold up to that per array of each; reads are chunk-aligned anyway
        self._f = h5py.File(path, "r", rdcc_nbytes=1 << 18)
        self._ds: dict = {}  # name -> h5py Dataset: looking one up by name costs more than a small read

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
        d = self[name]
        if not 0 <= lo < hi <= d.shape[0] or out.shape != (hi - lo,) + d.shape[1:] or not out.flags.c_contiguous:
            d.read_direct(out, np.s_[lo:hi])  # h5py's checks and messages for anything unusual
            return
        fspace = d.id.get_space()
        fspace.select_hyperslab((lo,) + (0,) * (d.ndim - 1), out.shape)
        d.id.read(h5py.h5s.create_simple(out.shape), fspace, out)

    def close(self) -> None:
        self._f.close()


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
