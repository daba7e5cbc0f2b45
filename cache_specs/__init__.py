"""The contract between pipeline/ (writers) and heads/ (readers): what each cache holds and how to open it.

    from cache_specs import open_cache
    cache = open_cache("navcache_cache/demo_rover/train/frame_features")
"""
from .reader import CacheReader, open_cache
from .spec import ArraySpec, CacheSpec

__all__ = ["ArraySpec", "CacheReader", "CacheSpec", "open_cache"]
