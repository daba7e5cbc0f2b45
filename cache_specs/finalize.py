"""Finalising a planned cache: compaction, statistics, index, manifest and sweeping, in one call.

A run hands over its target layout: every episode of the split, in index order, with the part
that holds its current rows (``layout``), and the fingerprint of each part it names (``parts``).
Parts are log-structured: an episode that changed or left the split leaves a *dead* row in its old
part, which the index no longer points at. ``finalize`` then

1. checks every named part against its fingerprint and that it holds the episode named;
2. compacts: the live rows of dead-heavy parts (live fraction < ``min_live``) and of small parts
   (fewer than ``part_size / 2`` live episodes, when two or more are small) are *copied* into new
   parts of ``part_size`` episodes, in id order. Nothing is re-encoded; the outcome depends only on
   the layout, so a rerun after a kill copies into the same parts;
3. if the manifest already describes this exact layout (``layout_sha256``), only sweeps;
4. otherwise retires the manifest, computes ``stats_fn(load)`` (``load(name)``: the array over every
   ok row, index order), writes the index, then the manifest (the commit point);
5. sweeps temporaries and every part folder the new manifest does not list (superseded parts,
   leftovers of killed runs), renaming each to a trash name first so a kill never leaves a
   half-deleted folder under a part's name.

A kill anywhere before 4's manifest write leaves the retired manifest as planning's base, so the
rerun plans and compacts the same way; after it, the cache is complete and the rerun only sweeps.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from .layout import MANIFEST, PARTS, TMP_PREFIX, TRASH_PREFIX, canonical_json, fsync_dir, is_part_name, part_id, private_name, read_json, sha256_file
from .manifest import (
    INDEX,
    MANIFEST_FORMAT,
    MANIFEST_SHA_KEY,
    IncompleteCache,
    check_parts,
    invalidate,
    last_finalized,
    manifest_checksum,
    remove_temporaries,
    write_cache_files,
)
from .parts import copy_part, free_numbers, open_part_data, part_fingerprint, part_number

#: ``load(name)`` -> the array's rows of every ok episode, in index order
Load = Callable[[str], np.ndarray]


def finalize(
    cache_dir: Path,
    layout: Sequence[tuple[str, str]],
    parts: Mapping[str, str],
    info: Mapping[str, Any],
    stats_fn: Callable[[Load], Mapping[str, Any] | None] | None = None,
    *,
    part_size: int,
    chunk_rows: int = 64,
    min_live: float = 0.5,
) -> dict:
    """Make ``cache_dir`` a complete cache of ``layout`` ((episode id, part id), index order);
    return its manifest. ``parts``: {part id: fingerprint} of every part ``layout`` names.
    Compacted parts take the lowest numbers neither ``layout`` nor the last finalised manifest
    uses. Raises IncompleteCache when a part
    is missing, stale, or lacks an episode the layout puts there."""
    cache_dir = Path(cache_dir)
    metas = {m["part"]: m for m in check_parts(cache_dir, parts)}
    entries = {pid: {e["episode_id"]: e for e in m["episodes"]} for pid, m in metas.items()}
    for eid, pid in layout:
        if eid not in entries.get(pid, {}):
            raise IncompleteCache(f"{cache_dir}: part {pid} does not hold episode {eid!r}")
    last = last_finalized(cache_dir) or {"parts": {}}
    free = free_numbers({part_number(p) for p in parts} | {part_number(p) for p in last["parts"]})
    layout, new_parts = _compact(cache_dir, list(layout), metas, entries, part_size, chunk_rows, free, min_live)
    for m in new_parts:
        metas[m["part"]] = m
        entries[m["part"]] = {e["episode_id"]: e for e in m["episodes"]}
    live = sorted({pid for _, pid in layout})
    digest = hashlib.sha256(canonical_json({"info": dict(info), "layout": layout, "parts": {p: metas[p]["fingerprint"] for p in live}})).hexdigest()
    current = _current_manifest(cache_dir)
    if current is not None and current.get("layout_sha256") == digest:
        sweep(cache_dir, set(current["parts"]))
        return current
    invalidate(cache_dir)  # from here until the new manifest lands, the cache is not complete
    rows = [(pid, entries[pid][eid]) for eid, pid in layout]
    full = dict(info)
    stats = stats_fn(_loader(cache_dir, rows, metas)) if stats_fn is not None else None
    if stats:
        full["stats"] = dict(stats)
    extra = {"layout_sha256": digest}
    manifest = write_cache_files(cache_dir, [metas[p] for p in live], rows, full, extra)
    sweep(cache_dir, set(live))
    return manifest


def _compact(cache_dir: Path, layout: list, metas: dict, entries: dict, part_size: int, chunk_rows: int, free: Iterator[int], min_live: float):
    """(layout with moved episodes, part.json of each new part); see the module docstring."""
    live: dict[str, list[str]] = defaultdict(list)
    for eid, pid in layout:
        live[pid].append(eid)
    heavy, small = [], []
    for pid, eids in sorted(live.items()):
        m = metas[pid]
        rows = sum(entries[pid][e]["length"] for e in eids if entries[pid][e]["status"] == "ok")
        frac = rows / m["n_rows"] if m["n_rows"] else len(eids) / max(1, m["n_episodes"])
        if frac < min_live:
            heavy.append(pid)
        elif 2 * len(eids) < part_size:
            small.append(pid)
    chosen = heavy + (small if len(small) >= 2 or heavy else [])
    if not chosen:
        return layout, []
    picks = sorted((eid, pid) for pid in chosen for eid in live[pid])
    moved, new_parts = {}, []
    for lo in range(0, len(picks), part_size):
        group = picks[lo : lo + part_size]
        backend = metas[group[0][1]]["backend"]
        fp = part_fingerprint(backend, [(eid, entries[pid][eid].get("fingerprint")) for eid, pid in group])
        new = part_id(next(free))
        meta = copy_part(cache_dir / PARTS, new, fp, [(cache_dir / PARTS / pid, metas[pid], eid) for eid, pid in group], chunk_rows)
        new_parts.append(meta)
        moved.update({eid: new for eid, _ in group})
    return [(eid, moved.get(eid, pid)) for eid, pid in layout], new_parts


def _current_manifest(cache_dir: Path) -> dict | None:
    """The manifest, if it is intact: current format, own checksum right, index unchanged."""
    try:
        m = read_json(cache_dir / MANIFEST)
        if m.get("format") != MANIFEST_FORMAT or m.get(MANIFEST_SHA_KEY) != manifest_checksum(m):
            return None
        return m if sha256_file(cache_dir / INDEX) == m.get("index_sha256") else None
    except (OSError, ValueError, AttributeError):
        return None


def _loader(cache_dir: Path, rows: Sequence[tuple[str, Mapping]], metas: Mapping[str, Mapping]) -> Load:
    """``load(name)`` for ``stats_fn``: one whole-array read per part, then the ok rows gathered."""

    def load(name: str) -> np.ndarray:
        cache: dict[str, np.ndarray] = {}
        blocks = []
        for pid, e in rows:
            if e["status"] != "ok":
                continue
            if pid not in cache:
                data = open_part_data(cache_dir / PARTS / pid, metas[pid])
                try:
                    cache[pid] = np.asarray(data[name][:])
                finally:
                    data.close()
            blocks.append(cache[pid][e["start"] : e["start"] + e["length"]])
        return np.concatenate(blocks) if blocks else np.zeros((0,))

    return load


def sweep(cache_dir: Path, keep: set[str]) -> list[str]:
    """Delete temporaries and every part folder not in ``keep``; return the part names removed.
    Only for the cache's owner (a plain run, a repair): shard jobs may be writing meanwhile.
    Only what our writers make goes: anything else in ``parts/`` (a user's file, a folder not
    named ``part-N``) stays, and ``verify`` reports it as a stray."""
    remove_temporaries(cache_dir)
    pdir = Path(cache_dir) / PARTS
    gone = []
    if not pdir.is_dir():
        return gone
    for d in sorted(pdir.iterdir()):
        if d.name in keep or d.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
            continue
        if not (is_part_name(d.name) and d.is_dir() and not d.is_symlink()):
            continue
        trash = pdir / private_name(TRASH_PREFIX, d.name)
        os.rename(d, trash)
        shutil.rmtree(trash, ignore_errors=True)
        gone.append(d.name)
    if gone:
        fsync_dir(pdir)
    return gone
