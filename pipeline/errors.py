"""Exceptions shared by sources, stages and executors."""
from __future__ import annotations


class NavcacheError(Exception):
    """A user-facing error: the message says what is wrong and where."""


class ConfigError(NavcacheError):
    """An invalid project file or option; the message names the field."""


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
