"""Content-based fingerprints: what a part was computed from, never when or where.

An episode's fingerprint in a stage (``plan.py``) covers the spec and its version, the stage's code
version and settings, the encoder id and a hash of its weights, the source kind and options, the
record fields and the content of the files the stage reads, and the episode's fingerprints in
the upstream stages it consumes; a part's fingerprint is its list of episode fingerprints.
mtimes and absolute cache paths never enter it, so touching files or moving the cache root
recomputes nothing.
"""
from __future__ import annotations

import functools
import hashlib
import json
import operator
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from navcache.cache_specs.layout import sha256_file

from .cores import usable_cores


#: ``canonical_json``'s encoder, built once (``json.dumps`` with options builds one per call);
#: same bytes, checked by tests/pipeline/test_planning_fast.py
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _canonical(obj: Any) -> bytes:
    return _CANONICAL.encode(obj).encode()


def hash_obj(obj: Any) -> str:
    return hashlib.sha256(_canonical(obj)).hexdigest()


def stage_fingerprints(base: Any, content: Mapping[str, str], upstream: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """``{id: hash_obj({"stage": base, "episode": content[id], "upstream": {u: upstream[u][id]}})}``
    for every id of ``content``, byte for byte, with ``base`` (the stage's spec, settings, encoder
    identity: kilobytes) serialised once instead of once per episode.

    Canonical JSON sorts keys ("episode" < "stage" < "upstream") and has no spaces, so the
    document is the concatenation below; ``tests/pipeline/test_planning_fast.py`` checks it
    against ``hash_obj``.
    """
    head = b'{"episode":'
    mid = b',"stage":' + _canonical(base) + b',"upstream":'
    ups = sorted(upstream)
    keys = [_canonical(u) + b":" for u in ups]
    out = {}
    for eid, c in content.items():
        up = b"{" + b",".join(k + _canonical(upstream[u][eid]) for k, u in zip(keys, ups)) + b"}"
        out[eid] = hashlib.sha256(head + _canonical(c) + mid + up + b"}").hexdigest()
    return out


class FileHasher:
    """sha256 of file contents, memoised by (path, size, mtime_ns, ctime_ns, inode).

    The memo only avoids re-reading unchanged files; a touched file is re-read and, having the same
    content, hashes the same. With ``db`` the memo persists across runs (SQLite, one per cache root).

    Safe where timestamps are coarse (NFS servers storing seconds, FAT's 2 s) or clocks differ:
    a file rewritten with the same size within one timestamp tick keeps its key. So an entry is
    trusted only when the file's mtime and ctime were more than ``racy_s`` older than the moment
    its hash was taken (git's "racy clean" rule): any later write then stamps a newer time. An
    entry recorded too close to the file's last change is re-read at every lookup until the file
    has aged. ``racy_s`` covers the timestamp granularity plus the clock skew between this host
    and the file server. ``reads`` counts files actually read (what the memo saved is visible).

    Persisting is batched: new entries wait in memory and are written in one transaction per
    ``batch`` entries, at ``flush()`` (planning calls it once per stage) and at ``close()``. A
    process killed in between loses only the entries not yet flushed (they cost a rehash next
    time); SQLite's journal makes each flush all-or-nothing, so the memo is never half-written.
    No write transaction stays open between flushes: concurrent jobs (SLURM array tasks planning
    together) only wait for one short flush. The persisted memo is read in one query, on first use.
    """

    def __init__(self, db: Path | None = None, racy_s: float = 3.0, batch: int = 50_000, read_threads: int | None = None):
        #: threads reading the files ``many`` must hash (default: the cores, at most 8)
        self.read_threads = read_threads if read_threads is not None else min(8, usable_cores())
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._mem: dict[tuple, tuple[str, int]] = {}
        self._lock = threading.Lock()
        self._racy_ns = int(racy_s * 1e9)
        self._batch = batch
        self._pending: list[tuple] = []
        self._loaded = False
        #: path -> its key when last looked up (None: missing): what ``prune`` knows without a stat
        self._current: dict[str, tuple | None] = {}
        self.reads = 0
        #: transactions written (one per flush that had entries)
        self.commits = 0
        self._db = None
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(db), timeout=30, check_same_thread=False)
            self._setup()

    def _setup(self, tries: int = 100) -> None:
        """WAL mode and the table. Switching to WAL takes the database exclusively and does not
        wait for a busy one, so runs starting together (shard jobs, concurrent runs) retry it."""
        for i in range(tries):
            try:
                if self._db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    self._db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                if i == tries - 1:
                    raise
                time.sleep(0.05 + 0.01 * i)
        self._db.execute("PRAGMA synchronous=NORMAL")  # a memo: a lost row only costs a rehash
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(h)")}
        if cols and "hashed" not in cols:  # a memo from before ctime and hashing times were kept: untrusted
            self._db.execute("DROP TABLE IF EXISTS h")
        self._db.execute("CREATE TABLE IF NOT EXISTS h (path TEXT, size INT, mtime INT, ctime INT, ino INT, sha TEXT, hashed INT,"
                         " PRIMARY KEY (path, size, mtime, ctime, ino))")
        self._db.commit()

    @staticmethod
    def _key(path: str, st: os.stat_result) -> tuple:
        return (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    def _trusted(self, key: tuple, hashed_ns: int) -> bool:
        return hashed_ns - max(key[2], key[3]) > self._racy_ns

    def _load(self) -> None:
        """The persisted memo, read once: one query beats one per file by ~20x at 100K files."""
        rows = self._db.execute("SELECT path, size, mtime, ctime, ino, sha, hashed FROM h").fetchall()
        loaded = dict(zip(map(operator.itemgetter(0, 1, 2, 3, 4), rows), map(operator.itemgetter(5, 6), rows)))  # C speed
        with self._lock:
            loaded.update(self._mem)  # entries hashed before the load are as new
            self._mem = loaded
            self._loaded = True

    def _lookup(self, key: tuple) -> str | None:
        if self._db is not None and not self._loaded:
            self._load()
        hit = self._mem.get(key)
        return hit[0] if hit is not None and self._trusted(key, hit[1]) else None

    def __call__(self, path: Path | str) -> str:
        path = os.fspath(path)
        try:
            st = os.stat(path)
        except OSError:
            self._current[path] = None
            return "missing"  # the stage will quarantine the episode; its fingerprint still differs from a present file
        key = (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)  # = _key, inlined: one call per input file
        self._current[path] = key
        if not self._loaded and self._db is not None:
            self._load()
        hit = self._mem.get(key)
        if hit is not None and self._trusted(key, hit[1]):
            return hit[0]
        hashed_ns = time.time_ns()  # before reading: a write after this moment stamps a later time
        try:
            sha = sha256_file(Path(path))
            after = self._key(path, os.stat(path))
        except OSError:
            return "unreadable"
        with self._lock:
            self.reads += 1
            if after != key:
                return sha  # changed while read: this hash belongs to no stable key
            self._mem[key] = (sha, hashed_ns)
            if self._db is not None:
                self._pending.append((*key, sha, hashed_ns))
                full = len(self._pending) >= self._batch
        if self._db is not None and full:
            self.flush()
        return sha

    def many(self, paths: Iterable[Path | str]) -> list[str]:
        """``[self(p) for p in paths]``, with the memo hit (planning's every file) in one loop; the
        misses (files to read: a first extract's every file) are read in parallel threads, since
        file reads and sha256 release the GIL (``read_threads``)."""
        if self._db is not None and not self._loaded:
            self._load()
        mem, current, racy, out, misses = self._mem, self._current, self._racy_ns, [], []
        for p in paths:
            s = os.fspath(p)
            try:
                st = os.stat(s)
            except OSError:
                out.append(self(s))
                continue
            key = (s, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            hit = mem.get(key)
            if hit is not None and hit[1] - max(key[2], key[3]) > racy:  # = _trusted
                current[s] = key
                out.append(hit[0])
            else:
                misses.append(len(out))
                out.append(s)  # a miss reads the file: its second stat costs nothing next to that
        todo = list(dict.fromkeys(out[i] for i in misses))  # a path named twice is read once
        if len(todo) > 1 and self.read_threads > 1:
            if self._pool is None or self._pool_pid != os.getpid():  # a forked child has the pool but not its threads
                self._pool, self._pool_pid = ThreadPoolExecutor(self.read_threads, thread_name_prefix="navcache-hash"), os.getpid()
            done = dict(zip(todo, self._pool.map(self, todo)))
        else:
            done = {t: self(t) for t in todo}
        for i in misses:
            out[i] = done[out[i]]
        return out

    def saw(self, keys: Iterable[tuple]) -> None:
        """Record files' keys (``trusted_key``'s form) as seen now without a lookup, as a caller
        that answered them from its own memo did: ``prune`` then judges their rows without a stat."""
        keys = list(keys)
        self._current.update(zip(map(operator.itemgetter(0), keys), keys))  # C speed: called per episode

    def trusted_key(self, path: Path | str) -> tuple | None:
        """The (path, size, mtime_ns, ctime_ns, inode) of ``path`` at its last lookup here, when the
        memo trusts the hash it holds for that key (the racy rule above): as long as the file
        keeps this key, a lookup returns the same hash. None: not looked up, missing, or untrusted."""
        key = self._current.get(os.fspath(path))
        hit = self._mem.get(key) if key is not None else None
        return key if hit is not None and self._trusted(key, hit[1]) else None

    def flush(self) -> None:
        """Write the entries hashed since the last flush, in one transaction."""
        with self._lock:
            rows, self._pending = self._pending, []
            if self._db is None or not rows:
                return
            with self._db:  # BEGIN ... COMMIT, or ROLLBACK on error
                self._db.executemany("INSERT OR REPLACE INTO h VALUES (?,?,?,?,?,?,?)", rows)
            self.commits += 1

    def prune(self, full: bool = True) -> int:
        """Delete the persisted rows that can never hit again, returning how many: the file is
        gone, or its (size, mtime, ctime, inode) is no longer the row's. A ctime never goes back,
        so such a row is dead for good, whatever other runs do meanwhile: deleting it is safe
        while concurrent jobs read and write the memo.

        Paths looked up by this hasher are judged by what the lookups saw (no system call);
        ``full`` also stats every other path the memo holds (files of other splits, or no
        longer named by any annotation): one ``stat`` per such path. Deletes go in transactions
        of ``batch`` rows: a kill in between leaves only rows a later prune deletes.
        """
        if self._db is None:
            return 0
        self.flush()
        if not self._loaded:
            self._load()
        with self._lock:
            keys = list(self._mem)
        now: dict[str, tuple | None] = dict(self._current)
        dead = []
        for key in keys:
            path = key[0]
            if path not in now:
                if not full:
                    continue
                try:
                    now[path] = self._key(path, os.stat(path))
                except OSError:
                    now[path] = None
            if now[path] != key:
                dead.append(key)
        for i in range(0, len(dead), self._batch):
            with self._db:
                self._db.executemany("DELETE FROM h WHERE path=? AND size=? AND mtime=? AND ctime=? AND ino=?", dead[i : i + self._batch])
            self.commits += 1
        with self._lock:
            for key in dead:
                self._mem.pop(key, None)
        return len(dead)

    def close(self) -> None:
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.shutdown()
        self._pool = None
        if self._db is not None:
            self.flush()
            self._db.close()
            self._db = None


def memo_hasher(cache_root: Path) -> FileHasher:
    """The cache root's persistent file-hash memo (``<root>/.navcache/filehash.sqlite``), or an
    in-memory one when the cache root does not exist yet (a dry run creates nothing) or its memo
    cannot be opened (a read-only cache root: planning still works, it only re-hashes)."""
    db = Path(cache_root) / ".navcache" / "filehash.sqlite"
    if not Path(cache_root).is_dir():
        return FileHasher()
    try:
        return FileHasher(db)
    except (OSError, sqlite3.Error):
        return FileHasher()


def episode_fingerprint(episode, root: Path, hasher: FileHasher, files: Iterable[Path] | None = None, record_keys: tuple[str, ...] | None = None) -> str:
    """Record content + (path relative to the dataset root, content hash) of the files a stage reads.

    ``files``: the entries of ``episode.files`` the stage reads (``Stage.files_read``; None = all),
    so e.g. a re-encoded JPEG does not recompute ground-truth poses and a changed ``.gt.npz`` does
    not recompute frame features; ``record_keys`` limits the record to the fields a stage reads,
    so e.g. a corrected pose does not recompute image features.
    Pass ``Stage.record_keys``: the fields the stage's source declares for the stage's uses
    (``pipeline/sources/fields.py``), never a hand-written list.
    """
    paths = [os.fspath(p) for p in (episode.files if files is None else files)]
    return fingerprint_of(episode, root, paths, hasher.many(paths), record_keys)


def episode_fingerprints(episodes: Iterable, root: Path, hasher: FileHasher, files_of: Callable, record_keys: tuple[str, ...] | None) -> dict[str, str]:
    """``{id: episode_fingerprint(e, root, hasher, files_of(e), record_keys)}``, the same strings,
    with every episode's files in one ``hasher.many`` call: a first extract's reads then run in
    parallel threads across episodes (per episode, 8 files left the threads mostly waiting)."""
    listed = [(e, [os.fspath(p) for p in files_of(e)]) for e in episodes]
    shas = iter(hasher.many([p for _, paths in listed for p in paths]))
    return {e.episode_id: fingerprint_of(e, root, paths, [next(shas) for _ in paths], record_keys) for e, paths in listed}


def fingerprint_of(episode, root: Path, paths: list[str], shas: list[str], record_keys: tuple[str, ...] | None) -> str:
    """``episode_fingerprint`` from the files' paths (str) and their content hashes, already known."""
    record = episode.record if record_keys is None else {k: episode.record[k] for k in record_keys if k in episode.record}
    prefix = _dir_prefix(root)
    n = len(prefix)
    # = str(Path(p).relative_to(root)) for the normalised absolute paths sources give,
    # without building two Path objects per file (a third of planning's time at 100K files)
    rels = [s[n:] if s.startswith(prefix) and _normal(s, n) else _relative(s, root) for s in paths]
    hashed = list(zip(rels, shas))  # (rel, sha) pairs: JSON arrays, as before
    return hash_obj({"id": episode.episode_id, "record": record, "files": hashed, "quarantine": episode.quarantine})


@functools.lru_cache(maxsize=256)  # a pure function of its argument, called once per episode
def _dir_prefix(root: Path) -> str:
    r = str(Path(root))
    return r if r.endswith(os.sep) else r + os.sep


def _normal(s: str, start: int) -> bool:
    """``s[start:]`` is a non-empty path pathlib would leave as written (no "//", ".", trailing "/")."""
    tail = s[start - 1:]
    return len(s) > start and "//" not in tail and "/./" not in tail and not tail.endswith(("/", "/.")) and not tail.startswith("/./")


def _relative(path: str, root: Path) -> str:
    """``path`` relative to ``root`` when under it (the pathlib rule), else unchanged."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path
