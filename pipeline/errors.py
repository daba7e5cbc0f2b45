"""Exceptions shared by sources, stages and executors (the base classes live in ``cache_specs.errors``)."""
from __future__ import annotations

from navcache.cache_specs.errors import ConfigError, NavcacheError

__all__ = ["ConfigError", "DatasetError", "NavcacheError", "Quarantine"]


class Quarantine(Exception):
    """Raised while reading or computing one episode: the episode is set aside with ``reason``.

    The run goes on; the episode is listed (with the reason) in the cache index and in the run
    summary, and ``--strict`` turns any quarantine into a failed run.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class DatasetError(NavcacheError):
    """The dataset as a whole cannot be read (e.g. its annotation file is not valid JSON)."""
