"""Run the backend conformance suite shipped in ``cache_specs.testing`` against every built-in backend."""
from __future__ import annotations

import pytest

from navcache.cache_specs.backends import BACKENDS
from navcache.cache_specs.testing import BackendConformance


class TestZarr(BackendConformance):
    backend_name = "zarr"


class TestZarrRaw(BackendConformance):
    backend_name = "zarr-raw"


class TestHDF5(BackendConformance):
    backend_name = "hdf5"


@pytest.mark.slow  # the hdf5 suite again with gzip off: the same code path but for the filter list
class TestHDF5Raw(BackendConformance):
    backend_name = "hdf5-raw"


def test_every_backend_has_a_conformance_class():
    tested = {cls.backend_name for cls in BackendConformance.__subclasses__()}
    assert tested >= set(BACKENDS), f"backends without a conformance run: {set(BACKENDS) - tested}"


def test_unknown_backend_is_refused():
    from navcache.cache_specs.backends import get_backend

    try:
        get_backend("parquet")
    except ValueError as e:
        assert "zarr" in str(e) and "hdf5" in str(e)
    else:
        raise AssertionError("get_backend accepted an unknown name")
