"""Dataset sources by name. Modules are imported only when their kind is asked for, so listing the
kinds (or importing ``pipeline.sources``) never pulls in decoders a run does not use."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Mapping

from navcache.pipeline.errors import ConfigError
from navcache.pipeline.sources.base import Episode, Frames, Source
from navcache.pipeline.sources.options import build_options

__all__ = ["SOURCES", "Episode", "Frames", "Source", "make_source", "source_class", "source_options"]

SOURCES: dict[str, str] = {
    "navila": "navcache.pipeline.sources.navila:NavilaSource",
    "rover": "navcache.pipeline.sources.rover:RoverSource",
    "videos": "navcache.pipeline.sources.videos:VideosSource",
    "lerobot": "navcache.pipeline.sources.lerobot:LeRobotSource",
    "vamos": "navcache.pipeline.sources.vamos:VamosSource",
}


def source_class(kind: str) -> type:
    """The class registered as ``kind``; ConfigError listing the valid kinds if there is none."""
    source_kind_known(kind)
    module_name, _, attr = SOURCES[kind].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def source_options(kind: str, options: Mapping[str, Any] | None, where: str | None = None) -> Any:
    """Source ``kind``'s options as its frozen dataclass, without importing the source module.

    ConfigError for an unknown kind (listing the valid ones), an unknown option (listing the
    valid ones) or a bad value, naming the field under ``where`` (e.g. ``datasets.nav.options``).
    """
    source_kind_known(kind)
    return build_options(kind, options or {}, where)


def source_kind_known(kind: str) -> None:
    if not isinstance(kind, str) or kind not in SOURCES:
        raise ConfigError(f"unknown source kind {kind!r}; valid kinds: {', '.join(sorted(SOURCES))}")


def make_source(kind: str, root: Path, **options) -> Source:
    """Instantiate the source ``kind`` on ``root`` with ``options`` (its ``Options`` fields).

    Raises ConfigError for an unknown kind (listing the valid ones), for option names the source
    does not take (listing the ones it does), and for invalid option values, naming the field.
    """
    cls = source_class(kind)
    return cls(Path(root), **options)
