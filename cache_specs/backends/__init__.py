"""Storage backends by name. ``get_backend("zarr")`` (default) or ``get_backend("hdf5")``.

``get_backend("zarr-raw")`` is the zarr backend without compression (see ``zarr_backend``); it is
not in ``BACKENDS`` (the names a project config offers) until the project decides to offer it.
"""
from __future__ import annotations

from .base import Backend, PartData

BACKENDS = ("zarr", "hdf5")


def get_backend(name: str) -> Backend:
    if name in ("zarr", "zarr-raw"):
        from .zarr_backend import ZarrBackend

        return ZarrBackend() if name == "zarr" else ZarrBackend(zstd_level=None)
    if name == "hdf5":
        from .hdf5_backend import HDF5Backend

        return HDF5Backend()
    raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "PartData", "get_backend"]
