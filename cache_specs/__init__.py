"""The contract between pipeline/ (writers) and heads/ (readers): what each cache holds and how to open it.

    from navcache.cache_specs import open_cache
    cache = open_cache("navcache_cache/demo_rover/train/frame_features")

Training data larger than RAM: ``make_loader`` (``cache_specs.streaming``) over caches joined by
episode id (``join_caches``).
"""
from .join import Join, JoinReport, join_caches
from .reader import CacheReader, open_cache
from .spec import ArraySpec, CacheSpec

__all__ = ["ArraySpec", "CacheReader", "CacheSpec", "Join", "JoinReport", "LoaderConfig", "StreamingLoader", "join_caches", "make_loader", "open_cache"]


def __getattr__(name: str):
    # the loader imports torch: only when asked for, so `import cache_specs` stays light
    if name in ("LoaderConfig", "StreamingLoader", "make_loader"):
        from . import streaming

        return getattr(streaming, name)
    raise AttributeError(f"module 'cache_specs' has no attribute {name!r}")
