"""The cache-level manifest and episode index, written once every part is committed.

The manifest is the last file written (atomic rename): a cache without one is incomplete and
``open_cache`` refuses it, so a partial cache never looks complete. ``invalidate`` does not delete
it but renames it to ``manifest.retired.json``: the cache stops looking complete, while planning
still knows the last finalised state (which parts hold which episode fingerprints), so an
interrupted or sharded rebuild keeps every unchanged episode and groups the rest the same way.
Finalising a planned cache (compaction, stats, index, manifest, sweeping) is ``finalize.finalize``.
"""
from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from .layout import (
    INDEX,
    MANIFEST,
    PART_JSON,
    RETIRED_MANIFEST,
    PARTS,
    TMP_PREFIX,
    TRASH_PREFIX,
    atomic_write_bytes,
    atomic_write_json,
    canonical_json,
    fsync_dir,
    read_json,
    sha256_file,
)
from .parts import read_part_meta

MANIFEST_FORMAT = "navcache-cache/2"
#: formats ``open_cache`` still reads (format 1: parts were fixed id-sorted slices, no dead rows)
READABLE_MANIFEST_FORMATS = ("navcache-cache/1", MANIFEST_FORMAT)
INDEX_SCHEMA = pa.schema(
    [
        ("episode_id", pa.string()),
        ("part", pa.string()),
        ("start", pa.int64()),
        ("length", pa.int64()),
        ("status", pa.string()),
        ("reason", pa.string()),
    ]
)


class IncompleteCache(RuntimeError):
    pass


def index_rows_table(rows: Iterable[tuple[str, Mapping[str, Any]]]) -> pa.Table:
    """The index of (part id, part.json episode entry) rows, in the order given."""
    cols: dict[str, list] = {f.name: [] for f in INDEX_SCHEMA}
    for pid, e in rows:
        cols["episode_id"].append(e["episode_id"])
        cols["part"].append(pid)
        cols["start"].append(e["start"])
        cols["length"].append(e["length"])
        cols["status"].append(e["status"])
        cols["reason"].append(e["reason"])
    return pa.table(cols, schema=INDEX_SCHEMA)


def index_table(part_metas: Sequence[Mapping[str, Any]]) -> pa.Table:
    return index_rows_table((meta["part"], e) for meta in part_metas for e in meta["episodes"])


def finalize_cache(cache_dir: Path, expected: Mapping[str, str], info: Mapping[str, Any]) -> dict:
    """Write ``index.parquet`` then ``manifest.json`` for parts ``expected`` ({part_id: fingerprint}),
    every row of every part live, parts in id order (the low-level form; ``finalize.finalize`` is
    what a pipeline run calls).

    Raises IncompleteCache if any expected part is missing or has another fingerprint.
    """
    metas = check_parts(cache_dir, expected)
    return write_cache_files(cache_dir, metas, [(m["part"], e) for m in metas for e in m["episodes"]], info)


def check_parts(cache_dir: Path, expected: Mapping[str, str]) -> list[dict]:
    """part.json of every expected part, in id order; IncompleteCache naming those missing or stale."""
    metas, bad = [], []
    for pid, fp in sorted(expected.items()):
        meta = read_part_meta(cache_dir / PARTS / pid)
        if meta is None or meta["fingerprint"] != fp:
            bad.append(pid)
        else:
            metas.append(meta)
    if bad:
        raise IncompleteCache(f"{cache_dir}: parts not built or stale: {', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}")
    return metas


def write_cache_files(
    cache_dir: Path, metas: Sequence[Mapping[str, Any]], rows: Sequence[tuple[str, Mapping[str, Any]]], info: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> dict:
    """Commit the index of ``rows`` ((part id, episode entry), index order) then the manifest
    listing parts ``metas``. Rows of a part not in ``rows`` are dead: readers never see them."""
    buf = io.BytesIO()
    pq.write_table(index_rows_table(rows), buf, compression="zstd")
    atomic_write_bytes(cache_dir / INDEX, buf.getvalue())
    ok = [e for _, e in rows if e["status"] == "ok"]
    manifest = {
        "format": MANIFEST_FORMAT,
        "complete": True,
        **dict(info),
        "spec": metas[0]["spec"] if metas else info.get("spec"),
        "counts": {"parts": len(metas), "episodes": len(rows), "ok": len(ok), "quarantined": len(rows) - len(ok), "rows": sum(e["length"] for e in ok)},
        "parts": {
            m["part"]: {
                "fingerprint": m["fingerprint"],
                "n_episodes": m["n_episodes"],
                "n_rows": m["n_rows"],
                "part_json_sha256": sha256_file(cache_dir / PARTS / m["part"] / PART_JSON),
            }
            for m in metas
        },
        "index_sha256": sha256_file(cache_dir / INDEX),
        **dict(extra or {}),
        "finalized_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    manifest[MANIFEST_SHA_KEY] = manifest_checksum(manifest)
    atomic_write_json(cache_dir / MANIFEST, manifest)
    # the new manifest is durable: the retired one no longer describes the last finalised state
    (cache_dir / RETIRED_MANIFEST).unlink(missing_ok=True)
    return manifest


#: the manifest's checksum of its own other keys: stats, spec and counts are read from it directly
MANIFEST_SHA_KEY = "manifest_sha256"


def manifest_checksum(manifest: Mapping[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(canonical_json({k: v for k, v in manifest.items() if k != MANIFEST_SHA_KEY})).hexdigest()


def remove_temporaries(cache_dir: Path) -> list[str]:
    """Delete what killed writers leave: ``.tmp-*``/trash folders under ``parts/`` and ``.tmp-*``
    files of the index/manifest writes in the cache folder. Returns the names removed. Only for a
    process that owns the cache (a plain run, a repair): a shard job's temporaries may be live."""
    import shutil

    gone = []
    for folder, prefixes in ((Path(cache_dir) / PARTS, (TMP_PREFIX, TRASH_PREFIX)), (Path(cache_dir), (TMP_PREFIX,))):
        if not folder.is_dir():
            continue
        for x in folder.iterdir():
            if x.name.startswith(prefixes):
                shutil.rmtree(x, ignore_errors=True) if x.is_dir() and not x.is_symlink() else x.unlink(missing_ok=True)
                gone.append(str(x.relative_to(cache_dir)))
    return gone


def read_manifest(cache_dir: Path) -> dict:
    path = Path(cache_dir) / MANIFEST
    if not path.exists():
        raise IncompleteCache(f"{cache_dir} is not a complete cache (no {MANIFEST}); build it with `navcache extract`")
    m = read_json(path)
    if m.get("format") not in READABLE_MANIFEST_FORMATS or not m.get("complete"):
        raise IncompleteCache(f"{path}: not a complete navcache manifest")
    return m


def last_finalized(cache_dir: Path) -> dict | None:
    """The last finalised manifest of the current format: ``manifest.json``, or the retired copy
    ``invalidate`` left; None if neither is readable. Planning's base (shard jobs never change it)."""
    for name in (MANIFEST, RETIRED_MANIFEST):
        try:
            m = read_json(Path(cache_dir) / name)
        except (OSError, ValueError):
            continue
        if isinstance(m, dict) and m.get("format") == MANIFEST_FORMAT and isinstance(m.get("parts"), dict):
            return m
    return None


def invalidate(cache_dir: Path) -> None:
    """Make the cache incomplete before it changes: rename the manifest to the retired name (one
    atomic rename), so readers refuse the cache while planning still finds the last finalised state."""
    cache_dir = Path(cache_dir)
    try:
        os.replace(cache_dir / MANIFEST, cache_dir / RETIRED_MANIFEST)
    except FileNotFoundError:
        return
    fsync_dir(cache_dir)  # the rename must be durable before any part changes
