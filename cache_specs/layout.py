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
import re
import shutil
import time
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


#: a temporary untouched this long belongs to no live writer, whichever host wrote it (seconds)
STALE_AFTER = 600.0


def sweep_stale_temporaries(folder: Path, prefix: str, stale_after: float = STALE_AFTER) -> list[Path]:
    """Delete what killed writers left in ``folder``; returns the files and folders removed.

    Candidates are only the names one writer makes for one output, ``<prefix>-<pid>-<8 hex>``
    (``private_name(p, n)`` with ``prefix = p + n``), and only once that writer is gone: its pid is
    not a live process here (a zombie is dead), *and* nothing in the entry (a folder's whole tree)
    was written for ``stale_after`` seconds. The pid test alone would delete the live temporary of
    a writer on another host sharing the folder (its pid means nothing here); the age test alone
    would delete a stalled but live local writer's. A live writer keeps writing, so its entry stays
    young; a pid reused by an unrelated process only postpones the sweep to a later run. Hand-rolled
    because what a temporary's name means (pid, output) is ours, not a library's.
    """
    pattern = re.compile(re.escape(prefix) + r"-(\d+)-[0-9a-f]{8}")
    removed = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None or entry.is_symlink() or _pid_alive(int(m.group(1))):
            continue
        try:
            if _written_within(Path(entry.path), time.time() - stale_after):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:  # another sweeper got there first
            continue
        removed.append(Path(entry.path))
    return removed


def _written_within(path: Path, since: float) -> bool:
    """Whether ``path`` or, for a folder, anything under it was modified after ``since`` (stops early)."""
    if path.lstat().st_mtime > since:
        return True
    if not path.is_dir():
        return False
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                if os.lstat(os.path.join(dirpath, name)).st_mtime > since:
                    return True
            except FileNotFoundError:
                continue
    return False


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process on this host (a zombie, killed but not reaped, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        pass  # no procfs (or the process just went): ask the kernel
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's live process (or an absurd pid): never sweep on a doubt
    return True


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
    """``data`` as ``path``, all or nothing: a private temporary, fsync, rename, fsync of the folder.
    Temporaries a killed writer of the same name left are swept first; ours never outlives an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path.parent, TMP_PREFIX + path.name)
    tmp = path.parent / private_name(TMP_PREFIX, path.name)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


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
