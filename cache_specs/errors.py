"""Exit codes and the base errors every layer shares (the lowest layer, so nothing above needs another).

Exit codes of the ``navcache`` commands (documented in the README):
    0  success
    1  a dataset or stage failed (errors listed), or nothing to open
    2  invalid configuration or options
    3  --strict and at least one episode was quarantined
    4  verify found damage (and --repair was not given or could not fix it)
"""
from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_QUARANTINE, EXIT_DAMAGE = 0, 1, 2, 3, 4


class NavcacheError(Exception):
    """A user-facing error: the message says what is wrong and where."""


class ConfigError(NavcacheError, ValueError):
    """An invalid project file, head config or option; the message names the field.

    Also a ``ValueError``: it is a bad value, and code that validates frozen dataclasses by catching
    ``ValueError`` (their ``__post_init__`` checks) keeps working when the builder wraps the message.
    """


class DamagedCache(NavcacheError):
    """A cache's files do not match what was written: a part missing, swapped, truncated, a chunk
    failing its checksum. Readers raise it instead of returning fill values; the message names the
    cache, the part and ``navcache verify --repair``."""
