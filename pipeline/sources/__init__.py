"""Dataset sources by name. Modules are imported only when their kind is asked for, so listing the
kinds (or importing ``pipeline.sources``) never pulls in decoders a run does not use."""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.sources.base import Episode, Frames, Source

__all__ = ["SOURCES", "Episode", "Frames", "Source", "make_source", "source_class"]

SOURCES: dict[str, str] = {
    "navila": "pipeline.sources.navila:NavilaSource",
    "rover": "pipeline.sources.rover:RoverSource",
    "videos": "pipeline.sources.videos:VideosSource",
}


def source_class(kind: str) -> type:
    """The class registered as ``kind``; ConfigError listing the valid kinds if there is none."""
    if not isinstance(kind, str) or kind not in SOURCES:
        raise ConfigError(f"unknown source kind {kind!r}; valid kinds: {', '.join(sorted(SOURCES))}")
    module_name, _, attr = SOURCES[kind].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def make_source(kind: str, root: Path, **options) -> Source:
    """Instantiate the source ``kind`` on ``root`` with ``options`` (its keyword arguments).

    Raises ConfigError for an unknown kind (listing the valid ones), for option names the source
    does not take (listing the ones it does), and for invalid option values (raised by the source).
    """
    cls = source_class(kind)
    params = inspect.signature(cls).parameters
    accepted = [name for name, p in params.items() if name != "root" and p.kind is not p.VAR_KEYWORD]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(options) - set(accepted))
    if unknown and not takes_any:
        raise ConfigError(
            f"unknown option(s) for source {kind!r}: {', '.join(unknown)}; "
            f"valid options: {', '.join(accepted) or 'none'}"
        )
    return cls(Path(root), **options)
