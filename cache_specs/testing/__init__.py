"""Test suites shipped with the contract, so a new storage backend proves itself by subclassing.

Like ``zarr.testing``: the suites need pytest and hypothesis (``pip install navcache[test]``)::

    from navcache.cache_specs.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        backend_name = "mybackend"      # registered in cache_specs.backends.BACKENDS
"""
from .backends import BackendConformance

__all__ = ["BackendConformance"]
