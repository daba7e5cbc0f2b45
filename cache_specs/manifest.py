"""The cache-level manifest and episode index, written once every part is committed.

The manifest is the last file written (atomic rename): a cache without one is incomplete and
``open_cache`` refuses it, so a partial cache never looks complete.
"""
from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from .layout import (
    INDEX,
    MANIFEST,
    PART_JSON,
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

MANIFEST_FORMAT = "navcache-cache/1"
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


def index_table(part_metas: Sequence[Mapping[str, Any]]) -> pa.Table:
    cols: dict[str, list] = {f.name: [] for f in INDEX_SCHEMA}
    for meta in part_metas:
        for e in meta["episodes"]:
            cols["episode_id"].append(e["episode_id"])
            cols["part"].append(meta["part"])
            cols["start"].append(e["start"])
            cols["length"].append(e["length"])
            cols["status"].append(e["status"])
            cols["reason"].append(e["reason"])
    return pa.table(cols, schema=INDEX_SCHEMA)


def finalize_cache(cache_dir: Path, expected: Mapping[str, str], info: Mapping[str, Any]) -> dict:
    """Write ``index.parquet`` then ``manifest.json`` for parts ``expected`` ({part_id: fingerprint}).

    Raises IncompleteCache if any expected part is missing or has another fingerprint.
    """
    metas, bad = [], []
    for pid, fp in sorted(expected.items()):
        meta = read_part_meta(cache_dir / PARTS / pid)
        if meta is None or meta["fingerprint"] != fp:
            bad.append(pid)
        else:
            metas.append(meta)
    if bad:
        raise IncompleteCache(f"{cache_dir}: parts not built or stale: {', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}")
    buf = io.BytesIO()
    pq.write_table(index_table(metas), buf, compression="zstd")
    atomic_write_bytes(cache_dir / INDEX, buf.getvalue())
    episodes = sum(m["n_episodes"] for m in metas)
    ok = sum(m["n_ok"] for m in metas)
    manifest = {
        "format": MANIFEST_FORMAT,
        "complete": True,
        **dict(info),
        "spec": metas[0]["spec"] if metas else info.get("spec"),
        "counts": {"parts": len(metas), "episodes": episodes, "ok": ok, "quarantined": episodes - ok, "rows": sum(m["n_rows"] for m in metas)},
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
        "finalized_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    manifest[MANIFEST_SHA_KEY] = manifest_checksum(manifest)
    atomic_write_json(cache_dir / MANIFEST, manifest)
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
    if m.get("format") != MANIFEST_FORMAT or not m.get("complete"):
        raise IncompleteCache(f"{path}: not a complete navcache manifest")
    return m


def invalidate(cache_dir: Path) -> None:
    """Remove the manifest before parts change, so readers never pair it with new parts."""
    try:
        (Path(cache_dir) / MANIFEST).unlink()
    except FileNotFoundError:
        return
    fsync_dir(Path(cache_dir))  # the removal must be durable before any part changes
