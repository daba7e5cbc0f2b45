"""Where things live in a cache, and the atomic file helpers every writer uses.

    <cache_root>/<dataset>/<split>/<spec>/
        manifest.json          written last, by atomic rename: its presence means "complete"
        manifest.retired.json  the last finalised manifest while a rebuild runs (planning's base)
        index.parquet          one row per episode, sorted by id: part, start, length, status, reason
        parts/part-00000/      one folder per part, renamed into place by its single writer
            part.json          fingerprint, episodes (each with its fingerprint), row counts,
                               per-array and per-file checksums; its ``files`` record (size of
                               each file written) is what a reader checks a part's listing against
                               (``integrity``)
            data.zarr | data.h5
        parts/.tmp-*           a writer's private folder while it works (orphan if it died)

Parts are immutable and may hold dead rows (episodes the index no longer points at); see
``finalize.py`` for compaction and sweeping.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
RETIRED_MANIFEST = "manifest.retired.json"
INDEX = "index.parquet"
PARTS = "parts"
PART_JSON = "part.json"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
#: a claim on a part by a running extract (``pipeline/leases.py``): a temporary, swept on finalise
LEASE_PREFIX = TMP_PREFIX + "lease-"


def cache_dir(cache_root: Path, dataset: str, split: str, spec: str) -> Path:
    return Path(cache_root) / dataset / split / spec


def part_id(i: int) -> str:
    return f"part-{i:05d}"


def is_part_name(name: str) -> bool:
    """Whether ``name`` is one ``part_id`` makes: only such folders are ours to sweep."""
    head, _, num = name.partition("-")
    return head == "part" and num.isascii() and num.isdigit() and part_id(int(num)) == name


def private_name(prefix: str, name: str) -> str:
    """A name no other process will pick: pid + random, so concurrent writers never collide."""
    return f"{prefix}{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file and folder under ``path`` so a rename never exposes unwritten data."""
    for dirpath, _, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / private_name(TMP_PREFIX, path.name)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=False).encode() + b"\n")


def read_json(path: Path) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def list_files(root: Path) -> list[str]:
    """Relative paths of all regular files under ``root``, sorted (stable across machines)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
