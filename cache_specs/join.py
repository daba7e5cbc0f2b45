"""Join caches of one split by episode id, from their indexes alone (no array is read).

    from navcache.cache_specs import join_caches, open_cache
    j = join_caches({"feats": open_cache(root, "rover", "train", "frame_features"),
                     "meta": open_cache(root, "rover", "train", "rover_meta")})
    j.episodes                # ids kept: ok in every cache, in the FIRST cache's storage order
    j.slices["feats"].start   # [N] where each kept episode's rows begin inside its part
    print(j.report)           # per cache: what was left out and why

Every head that reads more than one cache joins them here, so "which clips were used" has one
answer. Rows are located only through the index's per-episode (part, start, length): a part may
hold rows the index no longer references, so nothing here assumes a part's rows are all live or
that rows are contiguous across parts.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Mapping

import numpy as np


@dataclass(frozen=True)
class EpisodeSlices:
    """Where the kept episodes' rows are in one cache. Arrays are [N], parallel to ``Join.episodes``."""

    row: str  # the cache's row kind: "frame"/"pair" (length rows per episode) or "episode" (one row)
    parts: tuple[str, ...]  # part ids referenced, in order of first use
    part: np.ndarray  # [N] int64, index into ``parts``
    start: np.ndarray  # [N] int64, first row of the episode within its part
    length: np.ndarray  # [N] int64, number of rows

    def __len__(self) -> int:
        return len(self.part)


@dataclass(frozen=True)
class JoinReport:
    """``dropped[cache][episode_id]`` = why an episode that is ok in ``cache`` was left out
    ("absent from 'x'", "quarantined in 'x': <reason>", one per other cache that lacks it);
    ``quarantined[cache]`` = how many of the cache's own episodes are quarantined."""

    dropped: Mapping[str, Mapping[str, tuple[str, ...]]]
    quarantined: Mapping[str, int]

    def counts(self) -> dict[str, dict[str, int]]:
        """Per cache: {"absent from 'x'" | "quarantined in 'x'": episodes dropped for that cause}."""
        out = {}
        for cache, eps in self.dropped.items():
            c: Counter = Counter()
            for whys in eps.values():
                c.update(w.split(":")[0] for w in whys)
            out[cache] = dict(sorted(c.items()))
        return out

    @property
    def n_dropped(self) -> dict[str, int]:
        return {cache: len(eps) for cache, eps in self.dropped.items()}

    def __str__(self) -> str:
        lines = []
        for cache, counts in self.counts().items():
            what = ", ".join(f"{n} {why}" for why, n in counts.items()) or "none"
            lines.append(f"{cache}: {self.quarantined[cache]} quarantined; dropped {len(self.dropped[cache])} ok episodes ({what})")
        return "\n".join(lines)


@dataclass(frozen=True)
class Join:
    episodes: tuple[str, ...]  # [N] kept ids, deterministic order (the first cache's storage order)
    slices: Mapping[str, EpisodeSlices]
    report: JoinReport

    def __len__(self) -> int:
        return len(self.episodes)


def _ok_rows(name: str, reader):
    """The cache's ok index rows; an id listed twice as ok is a broken index, not a choice to make."""
    import polars as pl

    ok = reader.index.filter(pl.col("status") == "ok").select("episode_id", "part", "start", "length")
    dup = ok.filter(pl.col("episode_id").is_duplicated())
    if len(dup):
        raise ValueError(f"cache {name!r} ({reader.path}): episode ids listed twice as ok: {dup['episode_id'].unique().to_list()[:5]}")
    return ok


def _slices(row: str, rows) -> EpisodeSlices:
    parts = tuple(dict.fromkeys(rows["part"].to_list()))
    pos = {p: i for i, p in enumerate(parts)}
    return EpisodeSlices(
        row=row,
        parts=parts,
        part=np.array([pos[p] for p in rows["part"].to_list()], np.int64),
        start=rows["start"].to_numpy().astype(np.int64),
        length=rows["length"].to_numpy().astype(np.int64),
    )


def _why_dropped(names, readers, ok, kept_ids) -> dict[str, dict[str, tuple[str, ...]]]:
    status: dict[str, dict[str, tuple[str, str | None]]] = {}  # built only when something was dropped
    dropped: dict[str, dict[str, tuple[str, ...]]] = {}
    for n in names:
        lost = ok[n].join(kept_ids, on="episode_id", how="anti")["episode_id"].to_list()
        dropped[n] = {}
        for eid in lost:
            whys = []
            for m in names:
                if m == n:
                    continue
                if m not in status:
                    idx = readers[m].index
                    status[m] = dict(zip(idx["episode_id"].to_list(), zip(idx["status"].to_list(), idx["reason"].to_list())))
                st = status[m].get(eid)
                if st is None:
                    whys.append(f"absent from {m!r}")
                elif st[0] != "ok":
                    whys.append(f"quarantined in {m!r}: {st[1]}")
            dropped[n][eid] = tuple(whys)
    return dropped


def join_caches(readers: Mapping) -> Join:
    """Keep the episodes that are ok in every cache of ``readers`` ({name: CacheReader}), in the
    first cache's storage order, with each cache's (part, start, length) for them. Reads indexes only."""
    names = list(readers)
    if not names:
        raise ValueError("join_caches needs at least one cache")
    ok = {n: _ok_rows(n, readers[n]) for n in names}
    kept = ok[names[0]].select("episode_id").with_row_index("order")
    for n in names[1:]:
        kept = kept.join(ok[n].select("episode_id"), on="episode_id", how="semi")
    kept = kept.sort("order").select("episode_id").with_row_index("order")
    slices = {}
    for n in names:
        rows = kept.join(ok[n], on="episode_id", how="left").sort("order")
        slices[n] = _slices(readers[n].spec["row"], rows)
    quarantined = {n: int((readers[n].index["status"] != "ok").sum()) for n in names}
    report = JoinReport(dropped=_why_dropped(names, readers, ok, kept.select("episode_id")), quarantined=quarantined)
    return Join(episodes=tuple(kept["episode_id"].to_list()), slices=slices, report=report)
