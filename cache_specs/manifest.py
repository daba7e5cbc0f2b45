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

from .layout import INDEX, MANIFEST, PART_JSON, PARTS, atomic_write_bytes, atomic_write_json, read_json, sha256_file
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
    atomic_write_json(cache_dir / MANIFEST, manifest)
    return manifest


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
        pass
