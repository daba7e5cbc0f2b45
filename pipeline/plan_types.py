"""The plan's data: what each stage of a split builds (``StagePlan``) in which parts (``PartPlan``).

``plan.py`` computes them; the executors, ``runner`` and ``console`` read them. A first extract's
parts are ``PendingPart``s until their fingerprints are hashed (``plan._plan_fresh``).
"""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from navcache.cache_specs.layout import PARTS
from navcache.cache_specs.parts import read_part_meta

from .sources.base import Episode
from .stages.base import Stage


#: where an upstream episode lives: (part id, part fingerprint, episode fingerprint)
Location = tuple[str, str, str]


@dataclass
class PartPlan:
    part_id: str
    episodes: list[Episode]
    fingerprint: str
    state: str  # "up-to-date" | "stale" (a leftover under this name) | "missing"
    group: int = -1  # shard key of a new part; -1 for a part kept from the last finalised manifest
    episode_fps: dict[str, str] = field(default_factory=dict)
    #: upstream stage -> episode id -> where the plan expects that episode's rows
    upstream: dict[str, dict[str, Location]] = field(default_factory=dict)

    def locations(self) -> dict[str, Location]:
        """Where this part holds each of its episodes (what its downstream parts expect)."""
        return {e.episode_id: (self.part_id, self.fingerprint, self.episode_fps[e.episode_id]) for e in self.episodes}

    def want(self) -> None:
        """The build is starting on this part (a pending part's inputs are hashed on demand)."""


def _awaited(name: str) -> property:
    def get(self):
        self.want()
        self.ready.result()  # re-raises what the background fingerprinting raised
        return self.__dict__[name]

    def set(self, value) -> None:
        self.__dict__[name] = value

    return property(get, set)


class PendingPart(PartPlan):
    """A new part of a first extract whose fingerprints are still being hashed (``_plan_fresh``).

    It reads like any PartPlan; reading ``fingerprint``, ``episode_fps`` or ``upstream`` waits
    until ``ready`` is done. Nothing else about a fresh part depends on the hashes (its episodes,
    id, group and state are known from the listing), so the build starts decoding at once and
    only a part's commit (or a check against a part another run committed) waits.

    Its inputs are hashed when the build starts on it (``want``, called by the build as it pulls
    the part, and by any read of an awaited field), not all at the start: hashing a whole split
    at once competed with the first batches' decoding for the cores (measured: ~75% of the
    device's idle time in a first extract of 1,536 JPEG frames fell in the 0.5 s it took)."""

    fingerprint = _awaited("fingerprint")
    episode_fps = _awaited("episode_fps")
    upstream = _awaited("upstream")

    def __init__(self, ready: Future, on_want: Callable[[], None], *args, **kw):
        self.ready = ready
        self._on_want = on_want
        super().__init__(*args, **kw)

    def want(self) -> None:
        if not self.ready.done():
            self._on_want()


class Ahead(Protocol):
    """What an extract starts before its plan is complete (``runner._Ahead``)."""

    def load(self, stage: Stage) -> None:
        """Start loading ``stage``'s weights (only stages with ``setup_ahead``)."""

    def later(self, fn: Callable[[], None], drain: Callable[[], None]) -> None:
        """Run ``fn`` on a background thread; once the build is over (or failed), call ``drain``
        (``fn`` must then finish without waiting for anything more) and wait for ``fn``."""


@dataclass
class StagePlan:
    dataset: str
    split: str
    stage_name: str
    stage: Stage
    cache_dir: Path
    #: every part the target layout names: kept parts (group -1) first, then new parts
    parts: list[PartPlan]
    upstream_dirs: dict[str, Path] = field(default_factory=dict)
    finalized: bool = False
    part_size: int = 32
    #: parts of the last finalised layout that lose live episodes (changed or gone) in this plan
    superseded: set[str] = field(default_factory=set)
    #: the complete manifest's own checksum when planning read it (None: there was none)
    manifest_sha: str | None = None

    @property
    def todo(self) -> list[PartPlan]:
        """New parts not committed yet (a kept part is never rebuilt)."""
        return [p for p in self.parts if p.group >= 0 and p.state != "up-to-date"]

    def counts(self) -> dict[str, int]:
        """Parts by state, for ``status``: a finalised part that loses live episodes counts as
        stale (its rows of those episodes die), a new part as missing until committed."""
        out = {"up-to-date": 0, "stale": 0, "missing": 0}
        for p in self.parts:
            out["stale" if p.part_id in self.superseded else p.state] += 1
        out["stale"] += len(self.superseded - {p.part_id for p in self.parts})
        return out

    def committed(self, p: PartPlan, backend: str) -> bool:
        """``p`` is in ``parts/`` as planned (committed by this run, a concurrent one or a shard job)."""
        meta = read_part_meta(self.cache_dir / PARTS / p.part_id)
        return meta is not None and meta["fingerprint"] == p.fingerprint and meta.get("backend") == backend

    def expected(self) -> dict[str, str]:
        return {p.part_id: p.fingerprint for p in self.parts}

    def locations(self) -> dict[str, Location]:
        return {eid: where for p in self.parts for eid, where in p.locations().items()}

    def layout(self) -> list[tuple[str, str]]:
        """(episode id, part id) of every episode of the split, in index (id) order."""
        return sorted((e.episode_id, p.part_id) for p in self.parts for e in p.episodes)
