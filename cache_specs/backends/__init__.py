"""Storage backends by name: ``zarr`` (default; zstd chunks, smallest on disk), ``zarr-raw`` (the
same sharded zarr v3 layout with uncompressed chunks: for caches streamed every epoch, read at disk
speed through ``zarr_direct``; fp16 features compress by under 10%), ``hdf5`` (gzip chunks) and
``hdf5-raw`` (uncompressed chunks, for the same reason as ``zarr-raw``).
"""
from __future__ import annotations

from .base import Backend, PartData

BACKENDS = ("zarr", "zarr-raw", "hdf5", "hdf5-raw")


def get_backend(name: str) -> Backend:
    if name in ("zarr", "zarr-raw"):
        from .zarr_backend import ZarrBackend

        return ZarrBackend() if name == "zarr" else ZarrBackend(zstd_level=None)
    if name in ("hdf5", "hdf5-raw"):
        from .hdf5_backend import HDF5Backend

        return HDF5Backend() if name == "hdf5" else HDF5Backend(gzip_level=None)
    raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "PartData", "get_backend"]
