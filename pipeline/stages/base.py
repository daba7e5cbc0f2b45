"""The stage contract. A stage turns episodes (plus upstream cache rows) into rows of one cache spec.

Life of a stage in a run:
    identity() / dims()            cheap, at planning time (no weights loaded)
    prepare(episode, upstream)     in decode threads: read files, decode, preprocess (CPU)
    compute([prepared, ...])       in the main thread: one encoder batch spanning several episodes
Either may raise ``Quarantine(reason)`` for one episode; the run goes on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

from cache_specs.spec import CacheSpec

from ..sources.base import Episode, Source


@dataclass
class Prepared:
    """One episode ready for ``compute``; ``cost`` (e.g. frames) sizes encoder batches."""

    episode_id: str
    payload: Any
    cost: int = 1


class Stage:
    #: registry name, e.g. "frame-features"
    name: ClassVar[str]
    #: bump when the code changes what is written: every part of this stage recomputes
    code_version: ClassVar[str] = "1"
    #: whether the stage reads the episode's files (else only its record enters fingerprints)
    reads_files: ClassVar[bool] = True
    #: name suffixes of ``Episode.files`` entries the stage never reads (e.g. ".gt.npz" sidecars):
    #: they stay out of its fingerprints, so changing one does not recompute this stage
    skip_file_suffixes: ClassVar[tuple[str, ...]] = ()
    #: the record fields the stage uses (None = all); only these enter its fingerprints
    record_keys: ClassVar[tuple[str, ...] | None] = None
    #: frozen dataclass of this stage's settings (the ``stages.<name>`` block of the project file)
    Settings: ClassVar[type]

    def __init__(self, settings: Any, source: Source, source_options: Mapping[str, Any]):
        self.settings = settings
        self.source = source
        self.source_options = dict(source_options)

    # -- planning (cheap) -----------------------------------------------------------------------
    @property
    def consumes(self) -> tuple[str, ...]:
        """Upstream stages whose cache rows ``prepare`` receives (same dataset, split and part)."""
        return ()

    def files_read(self, episode: Episode) -> tuple:
        """The entries of ``episode.files`` this stage reads: the only files in its fingerprints."""
        if not self.reads_files:
            return ()
        return tuple(f for f in episode.files if not str(f).endswith(self.skip_file_suffixes)) if self.skip_file_suffixes else tuple(episode.files)

    def spec(self) -> CacheSpec:
        raise NotImplementedError

    def dims(self) -> dict[str, int]:
        raise NotImplementedError

    def identity(self) -> dict:
        """Everything besides inputs that changes this stage's output: settings, encoder, weights."""
        from ..typed import to_plain

        return {"settings": to_plain(self.settings)}

    def provenance(self) -> dict:
        return {}

    @property
    def batch_cost(self) -> int:
        """Target total ``Prepared.cost`` per ``compute`` call."""
        return 1

    # -- running --------------------------------------------------------------------------------
    def setup(self) -> None:
        """Load heavy resources once per process (encoder weights)."""

    def prepare(self, episode: Episode, upstream: Mapping[str, Mapping[str, np.ndarray]]) -> Prepared:
        raise NotImplementedError

    def compute(self, items: list[Prepared]) -> list[dict[str, np.ndarray]]:
        raise NotImplementedError

    # -- finalising -------------------------------------------------------------------------------
    def cache_stats(self, load: Callable[[str], np.ndarray]) -> dict:
        """Split-level statistics kept in the manifest (``CacheReader.stats``); ``load(name)`` gives
        an array's rows over every ok episode. Default: none."""
        return {}
