"""Which record fields change what a source gives for an episode, as the source declares them.

Every source class carries ``record_fields``: for each *use* of an episode, the record fields
that can change its result:

    frames       what ``read_frames`` decodes (default sampling, and with explicit indices)
    gt_geometry  what ``load_gt_geometry`` returns (sources with ground-truth geometry)
    poses        ground-truth planar poses and the sampled frame numbers they are taken at
    labels       labels, telemetry and weights kept as they are (rover)

A use a source lacks has no fields: the source has no such data. Stages name the uses they need
(``Stage.uses``); their fingerprints then cover exactly the declared fields, so a field cannot be
left out by a stage's hand-written list. Code that reads a record does so through
``declared_record``, which refuses any field not declared for the use: forgetting a declaration
fails loudly at the first read instead of silently keeping stale caches.
``tests/pipeline/test_source_fields.py`` checks the declarations behaviourally (perturb each field; any
field whose change changes the output must be declared).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

USES = ("frames", "gt_geometry", "poses", "labels")

#: Fields that hold the split name passed to ``episodes(split)``. They are declared like any other,
#: but stay out of fingerprints: a split's caches live in their own folder (<dataset>/<split>), so
#: parts of different splits are never compared, and leaving them out keeps the fingerprints of
#: caches built before the declarations.
SPLIT_FIELDS = frozenset({"split"})


class UndeclaredField(RuntimeError):
    """A record field read for a use its source does not declare it for (a programming error).

    Not a KeyError on purpose: ``Mapping.get`` and ``in`` would swallow a KeyError."""


def _table(source: Any) -> Mapping[str, tuple[str, ...]]:
    table = getattr(source, "record_fields", None)
    if not isinstance(table, Mapping):
        raise TypeError(f"source {type(source).__name__} declares no record_fields mapping (uses: {', '.join(USES)})")
    bad = sorted(set(table) - set(USES))
    if bad:
        raise TypeError(f"source {type(source).__name__} declares unknown uses {bad} (valid: {', '.join(USES)})")
    return table


def declared_fields(source: Any, uses: Iterable[str]) -> frozenset[str]:
    """Union of the fields ``source`` declares for ``uses``."""
    table = _table(source)
    uses = tuple(uses)
    bad = sorted(set(uses) - set(USES))
    if bad:
        raise ValueError(f"unknown record uses {bad} (valid: {', '.join(USES)})")
    return frozenset(f for use in uses for f in table.get(use, ()))


def fingerprint_fields(source: Any, uses: Iterable[str]) -> tuple[str, ...]:
    """Sorted declared fields that enter episode fingerprints (``SPLIT_FIELDS`` excepted)."""
    return tuple(sorted(declared_fields(source, uses) - SPLIT_FIELDS))


class DeclaredRecord(Mapping):
    """An episode record seen through its declared fields; any other field raises UndeclaredField."""

    def __init__(self, record: Mapping[str, Any], allowed: frozenset[str], what: str):
        self._record = record
        self._allowed = allowed
        self._what = what

    def _check(self, key: str) -> None:
        if key not in self._allowed:
            raise UndeclaredField(
                f"{self._what} read record field {key!r}, which is not declared for it "
                f"(declared: {', '.join(sorted(self._allowed)) or 'none'}); add it to the source's record_fields"
            )

    def __getitem__(self, key: str) -> Any:
        self._check(key)
        return self._record[key]

    def __contains__(self, key: object) -> bool:
        self._check(key)  # type: ignore[arg-type]
        return key in self._record

    def __iter__(self) -> Iterator[str]:
        return (k for k in self._record if k in self._allowed)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def declared_record(source: Any, episode: Any, uses: Iterable[str]) -> DeclaredRecord:
    """``episode.record`` restricted to the fields ``source`` declares for ``uses``."""
    uses = tuple(uses)
    what = f"{type(source).__name__} ({'/'.join(uses) or 'no use'}) on episode {episode.episode_id!r}"
    return DeclaredRecord(episode.record, declared_fields(source, uses), what)
