"""navcache: frozen-encoder caches for navigation and VLA training (installed as one package).

The repository keeps its layout (``cli.py``, ``pipeline/``, ``heads/``, ``cache_specs/``);
``pyproject.toml`` installs them as ``navcache.cli``, ``navcache.pipeline``, ``navcache.heads`` and
``navcache.cache_specs``, so no generic top-level names land in site-packages.

    import navcache
    cache = navcache.open_cache("navcache_cache/demo_rover/train/frame_features")
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("navcache")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__", "make_loader", "open_cache"]


def __getattr__(name: str):
    # lazily: `navcache --help` imports this package and must not pay for numpy/torch
    if name in ("open_cache", "make_loader"):
        from navcache import cache_specs

        return getattr(cache_specs, name)
    raise AttributeError(f"module 'navcache' has no attribute {name!r}")
