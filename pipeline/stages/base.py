"""The stage contract. A stage turns episodes (plus upstream cache rows) into rows of one cache spec.

Life of a stage in a run:
    identity() / dims()            cheap, at planning time (no weights loaded)
    prepare(episode, upstream)     in decode threads: read files, decode, preprocess (CPU)
    compute([prepared, ...])       in the main thread: one encoder batch spanning several episodes;
                                   per episode its arrays, or ``Computed(arrays, meta)`` to keep notes
                                   (e.g. frames dropped to fit in memory) in its part.json entry
Either may raise ``Quarantine(reason)`` for one episode; the run goes on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

from navcache.cache_specs.spec import CacheSpec

from ..errors import ConfigError
from ..sources.base import Episode, Source
from ..sources.fields import DeclaredRecord, declared_record, fingerprint_fields


@dataclass
class Prepared:
    """One episode ready for ``compute``; ``cost`` (e.g. frames) sizes encoder batches."""

    episode_id: str
    payload: Any
    cost: int = 1


@dataclass(frozen=True)
class Computed:
    """An episode's arrays plus ``meta``, JSON-ready notes kept in its part.json entry."""

    arrays: dict[str, np.ndarray]
    meta: dict


class Stage:
    #: registry name, e.g. "frame-features"
    name: ClassVar[str]
    #: bump when the code changes what is written: every part of this stage recomputes
    code_version: ClassVar[str] = "1"
    #: whether the stage reads the episode's files (else only its record enters fingerprints)
    reads_files: ClassVar[bool] = True
    #: what the stage takes from an episode's record, as uses of the fields its source declares
    #: (``pipeline/sources/fields.py``: frames, gt_geometry, poses, labels); None = the whole record.
    #: Fingerprints cover exactly those fields (``record_keys``), so none can be left out by hand.
    uses: ClassVar[tuple[str, ...] | None] = None
    #: fields kept in fingerprints although no use reads them (so that caches built before the
    #: source declarations keep their fingerprints); adding one never removes a declared field
    kept_fields: ClassVar[tuple[str, ...]] = ()
    #: uses without which the stage has nothing to read (ConfigError when the source lacks one)
    required_uses: ClassVar[tuple[str, ...]] = ()
    #: ``setup`` may run on another thread ahead of the build and again in it (it only loads
    #: encoders through ``FrozenEncoder.load``, which loads once under a lock): an extract then
    #: loads the weights while planning hashes the inputs (``runner._Ahead``)
    setup_ahead: ClassVar[bool] = False
    #: name suffixes of ``Episode.files`` entries the stage never reads (e.g. ".gt.npz" sidecars):
    #: they stay out of its fingerprints, so changing one does not recompute this stage
    skip_file_suffixes: ClassVar[tuple[str, ...]] = ()
    #: frozen dataclass of this stage's settings (the ``stages.<name>`` block of the project file)
    Settings: ClassVar[type]

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "record_keys" in cls.__dict__:
            # a hand-written list is what the source declarations replace
            raise TypeError(f"stage {cls.__name__}: declare `uses`; its record fields come from the source's record_fields")

    def __init__(self, settings: Any, source: Source, source_options: Mapping[str, Any]):
        self.settings = settings
        self.source = source
        self.source_options = dict(source_options)
        missing = [u for u in self.required_uses if u not in getattr(source, "record_fields", {})]
        if missing:
            raise ConfigError(
                f"stage {self.name!r} reads the records' {', '.join(missing)} fields, which source "
                f"{getattr(source, 'kind', type(source).__name__)!r} does not have"
            )

    # -- planning (cheap) -----------------------------------------------------------------------
    @property
    def record_keys(self) -> tuple[str, ...] | None:
        """Sorted record fields that enter this stage's episode fingerprints (None = all): the
        fields the source declares for ``uses``, plus ``kept_fields``."""
        if self.uses is None:
            return None
        return tuple(sorted({*fingerprint_fields(self.source, self.uses), *self.kept_fields}))

    def record(self, episode: Episode) -> DeclaredRecord:
        """The episode's record as this stage may read it: the fields declared for ``uses``
        (every field when ``uses`` is None, as then every field enters the fingerprint)."""
        if self.uses is None:
            return DeclaredRecord(episode.record, frozenset(episode.record), f"stage {self.name}")
        return declared_record(self.source, episode, self.uses)

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
        from navcache.cache_specs.config import to_plain

        return {"settings": to_plain(self.settings)}

    def provenance(self) -> dict:
        return {}

    def check(self, seen: dict | None = None) -> None:
        """Raise NavcacheError (one line naming the config field) if this stage's provider cannot
        run here: a model not importable or its weights not to be had. Cheap: loads no weights.
        ``seen`` memoises per-model outcomes across the stages of one run. Default: nothing to check."""

    @property
    def batch_cost(self) -> int:
        """Target total ``Prepared.cost`` per ``compute`` call."""
        return 1

    # -- running --------------------------------------------------------------------------------
    def setup(self) -> None:
        """Load heavy resources once per process (encoder weights)."""

    def teardown(self) -> None:
        """Release what ``setup`` started that outlives the process's use of the stage (a worker
        process); called once the stage's parts are built, also after a failure. Default: nothing."""

    def prepare(self, episode: Episode, upstream: Mapping[str, Mapping[str, np.ndarray]]) -> Prepared:
        raise NotImplementedError

    def collate(self, items: list[Prepared]) -> Any:
        """The CPU side of assembling a batch (e.g. stacking its frames), run on the feeding thread
        while the device thread computes the previous batch; its result reaches
        ``compute(items, collated)``. The batch just before may still be computing: rely on none
        of its effects (those of the batches before it are done). Default None:
        ``compute(items)`` assembles the batch itself."""
        return None

    def compute(self, items: list[Prepared]) -> list[dict[str, np.ndarray] | Computed]:
        """The episodes' arrays, in order; runs on the one device thread (``executors.local``).
        A stage with a ``collate`` also takes ``collated``, which it may receive as None."""
        raise NotImplementedError

    # -- finalising -------------------------------------------------------------------------------
    def cache_stats(self, load: Callable[[str], np.ndarray]) -> dict:
        """Split-level statistics kept in the manifest (``CacheReader.stats``); ``load(name)`` gives
        an array's rows over every ok episode. Default: none."""
        return {}
