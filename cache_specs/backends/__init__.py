"""Storage backends by name. ``get_backend("zarr")`` (default) or ``get_backend("hdf5")``."""
from __future__ import annotations

from .base import Backend, PartData

BACKENDS = ("zarr", "hdf5")


def get_backend(name: str) -> Backend:
    if name == "zarr":
        from .zarr_backend import ZarrBackend

        return ZarrBackend()
    if name == "hdf5":
        from .hdf5_backend import HDF5Backend

        return HDF5Backend()
    raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "PartData", "get_backend"]
