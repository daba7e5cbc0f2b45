"""Content-based fingerprints: what a part was computed from, never when or where.

An episode's fingerprint in a stage (``plan.py``) covers the spec and its version, the stage's code
version and settings, the encoder id and a hash of its weights, the source kind and options, the
record fields and the content of the files the stage reads, and the episode's fingerprints in
the upstream stages it consumes; a part's fingerprint is its list of episode fingerprints.
mtimes and absolute cache paths never enter it, so touching files or moving the cache root
recomputes nothing.
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable

from navcache.cache_specs.layout import canonical_json, sha256_file


def hash_obj(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj)).hexdigest()


class FileHasher:
    """sha256 of file contents, memoised by (path, size, mtime_ns, inode).

    The memo only avoids re-reading unchanged files; a touched file is re-read and, having the same
    content, hashes the same. With ``db`` the memo persists across runs (SQLite, one per cache root).
    """

    def __init__(self, db: Path | None = None):
        self._mem: dict[tuple, str] = {}
        self._lock = threading.Lock()
        self._db = None
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(db), timeout=30, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # a memo: a lost row only costs a rehash
            self._db.execute("CREATE TABLE IF NOT EXISTS h (path TEXT, size INT, mtime INT, ino INT, sha TEXT, PRIMARY KEY (path, size, mtime, ino))")

    def __call__(self, path: Path) -> str:
        try:
            st = os.stat(path)
        except OSError:
            return "missing"  # the stage will quarantine the episode; its fingerprint still differs from a present file
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        with self._lock:
            if key in self._mem:
                return self._mem[key]
            if self._db is not None:
                row = self._db.execute("SELECT sha FROM h WHERE path=? AND size=? AND mtime=? AND ino=?", key).fetchone()
                if row:
                    self._mem[key] = row[0]
                    return row[0]
        try:
            sha = sha256_file(path)
        except OSError:
            return "unreadable"
        with self._lock:
            self._mem[key] = sha
            if self._db is not None:
                self._db.execute("INSERT OR REPLACE INTO h VALUES (?,?,?,?,?)", (*key, sha))
                # commit now: an open write transaction would lock out every concurrent shard job
                # (SLURM array tasks plan at the same time) until this whole planning ends
                self._db.commit()
        return sha

    def many(self, paths: Iterable[Path]) -> list[str]:
        return [self(p) for p in paths]

    def close(self) -> None:
        if self._db is not None:
            self._db.commit()
            self._db.close()
            self._db = None


def episode_fingerprint(episode, root: Path, hasher: FileHasher, files: Iterable[Path] | None = None, record_keys: tuple[str, ...] | None = None) -> str:
    """Record content + (path relative to the dataset root, content hash) of the files a stage reads.

    ``files``: the entries of ``episode.files`` the stage reads (``Stage.files_read``; None = all),
    so e.g. a re-encoded JPEG does not recompute ground-truth poses and a changed ``.gt.npz`` does
    not recompute frame features; ``record_keys`` limits the record to the fields a stage reads,
    so e.g. a corrected pose does not recompute image features.
    Pass ``Stage.record_keys``: the fields the stage's source declares for the stage's uses
    (``pipeline/sources/fields.py``), never a hand-written list.
    """
    record = episode.record if record_keys is None else {k: episode.record[k] for k in record_keys if k in episode.record}
    hashed = []
    for p in episode.files if files is None else files:
        try:
            rel = str(Path(p).relative_to(root))
        except ValueError:
            rel = str(p)
        hashed.append((rel, hasher(Path(p))))
    return hash_obj({"id": episode.episode_id, "record": record, "files": hashed, "quarantine": episode.quarantine})
