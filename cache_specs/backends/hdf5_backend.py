"""HDF5 backend: one ``data.h5`` file per part, chunked datasets with gzip (portable everywhere)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np


class _H5Part:
    def __init__(self, path: Path):
        import h5py

        self._f = h5py.File(path, "r")

    def names(self) -> list[str]:
        return sorted(self._f.keys())

    def __getitem__(self, name: str):
        return self._f[name]

    def chunk_rows(self, name: str) -> int:
        """Rows per chunk of dataset ``name`` (all rows when stored contiguous): the unit a read decodes."""
        d = self._f[name]
        return int(d.chunks[0]) if d.chunks else max(1, int(d.shape[0]))

    def read_into(self, name: str, lo: int, hi: int, out: np.ndarray) -> None:
        """Rows ``lo:hi`` of ``name`` decoded straight into ``out`` (C-contiguous, e.g. shared memory)."""
        if hi > lo:
            self._f[name].read_direct(out, np.s_[lo:hi])

    def close(self) -> None:
        self._f.close()


class HDF5Backend:
    name = "hdf5"
    data_name = "data.h5"

    def __init__(self, gzip_level: int = 4):
        self.gzip_level = gzip_level

    def write(self, part_dir: Path, arrays: Mapping[str, np.ndarray], chunk_rows: int) -> None:
        import h5py

        with h5py.File(part_dir / self.data_name, "w-") as f:
            for name, arr in arrays.items():
                arr = np.ascontiguousarray(arr)
                kw = {}
                if arr.size:
                    kw = dict(
                        chunks=(max(1, min(chunk_rows, arr.shape[0])),) + arr.shape[1:],
                        compression="gzip",
                        compression_opts=self.gzip_level,
                        shuffle=True,
                        fletcher32=True,  # HDF5's own per-chunk checksum: a flipped byte fails loudly on read
                    )
                f.create_dataset(name, data=arr, **kw)

    def open(self, part_dir: Path) -> _H5Part:
        return _H5Part(part_dir / self.data_name)
