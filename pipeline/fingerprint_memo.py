"""Episode content fingerprints remembered across runs, so that an unchanged annotation set is not
serialised again: planning's largest cost after the ``stat`` of every input file.

``episode_fingerprint`` hashes the canonical JSON of the record fields a stage reads together with
the (path, content hash) of the files it reads. For a source whose records are a pure function of
the bytes its listing parsed (NaVILA: the annotation and pose files, the options, the split), the
source reports a ``listing_token`` that changes whenever any record could: the sha256 of those
bytes, the options and the code that turns them into records. Under one token, an episode's
record, hence its fingerprint, depends only on its files' contents. The memo keeps, per stage
choice of files and fields and per episode, a digest of the dataset root and the files'
``FileHasher`` keys (path, size, mtime, ctime, inode) and the fingerprint computed with them; an
entry is written only when the file-hash memo trusted every one of those hashes (its racy-clean
rule), so while the keys stay the same, the hashes would be the same. Planning still ``stat``s
every file (a changed image changes its key: that episode, and only it, is recomputed), but an
all-hit run neither serialises records nor loads the file-hash memo. A new token (an edited
record or pose) recomputes every episode of the split; those whose record did not change come out
with their old fingerprints (the memo only skips work, it never decides a fingerprint).

Quarantined episodes are never memoised: their quarantine can come from the file system (a path
that became a symlink out of the root), not from the token's bytes.

Stored as one JSON file per (dataset, split) under ``<cache root>/.navcache/fingerprint-memo/``,
replaced atomically (``atomic_write_bytes``); a missing, unreadable or foreign file is an empty
memo. The fingerprint code (this module and ``fingerprint.py``) enters the memo's key, so a change
to how fingerprints are computed cannot be answered from an older memo. Concurrent planners
(shard jobs) each write a complete memo of the same token; the last rename wins.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable

from navcache.cache_specs.layout import atomic_write_bytes

from .fingerprint import FileHasher, episode_fingerprints

FORMAT = 1


def code_digest(*files: str | Path) -> str:
    """sha256 of source files (code whose edits must invalidate a memo, without anyone bumping a
    number); where they cannot be read (an install without sources) a value new in every process,
    so that memos then only serve the process that wrote them."""
    try:
        return hashlib.sha256(b"".join(Path(f).read_bytes() for f in files)).hexdigest()
    except OSError:
        return os.urandom(16).hex()


_CODE = code_digest(__file__, Path(__file__).with_name("fingerprint.py"))


class FingerprintMemo:
    """The memo of one (dataset, split) listing; ``sections`` maps a stage's choice of files and
    record fields (``fingerprints``' ``section``) to ``{episode id: [files digest, fingerprint]}``."""

    def __init__(self, path: Path | None, token: str, sections: dict[str, dict[str, list[str]]] | None = None):
        self.path, self.token = path, token
        self._old = sections or {}
        self._new: dict[str, dict[str, list[str]]] = {}
        self.hits = 0
        self.misses = 0

    @classmethod
    def open(cls, cache_root: Path, dataset: str, split: str, token: str | None) -> FingerprintMemo | None:
        """The persisted memo for ``token`` (empty when there is none for it); None without a token
        (the source's records are not a function of bytes it can name)."""
        if token is None:
            return None
        if not Path(cache_root).is_dir():
            return cls(None, token)  # a dry run before the first build creates nothing
        path = Path(cache_root) / ".navcache" / "fingerprint-memo" / dataset / f"{split}.json"
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return cls(path, token)
        ok = isinstance(doc, dict) and doc.get("format") == FORMAT and doc.get("token") == token and doc.get("code") == _CODE
        sections = doc.get("sections") if ok else None
        return cls(path, token, sections if isinstance(sections, dict) else None)

    def fingerprints(self, section: str, episodes: Iterable, root: Path, hasher: FileHasher, files_of: Callable,
                     record_keys: tuple[str, ...] | None) -> dict[str, str]:
        """``{id: episode_fingerprint(e, root, hasher, files_of(e), record_keys)}``, the same
        strings, computed only for episodes whose files (paths or contents) changed since the memo.
        ``section`` names the stage's choice of files and fields (stages sharing it share entries)."""
        old = self._old.get(section)
        old = old if isinstance(old, dict) else {}
        new = self._new.setdefault(section, {})
        head = os.fspath(root)
        out, missed = {}, []
        for e in episodes:
            paths = [os.fspath(p) for p in files_of(e)]
            keys = None if e.quarantine is not None else _stat_keys(paths)
            digest = None
            if keys is not None:
                # repr of str and int is unambiguous, so is the digest of the whole tuple
                digest = hashlib.sha256(repr((head, keys)).encode("utf-8", "surrogatepass")).hexdigest()
                hit = old.get(e.episode_id)
                if type(hit) is list and len(hit) == 2 and hit[0] == digest and type(hit[1]) is str:
                    out[e.episode_id] = hit[1]
                    new[e.episode_id] = hit
                    hasher.saw(keys)
                    self.hits += 1
                    continue
            missed.append((e, paths, keys, digest))
        fps = episode_fingerprints([m[0] for m in missed], root, hasher, files_of, record_keys)
        for e, paths, keys, digest in missed:
            fp = out[e.episode_id] = fps[e.episode_id]
            self.misses += 1
            # remembered only when every hash is one the file-hash memo trusts for the key seen
            # above: a file changed since, or too recently for its timestamps to tell, is not
            if keys is not None and keys == [hasher.trusted_key(p) for p in paths]:
                new[e.episode_id] = [digest, fp]
        return out

    def save(self) -> None:
        """Write the entries of this run's episodes (the memo keeps nothing else), atomically, when
        any was computed; a read-only cache root only costs the recomputation next time."""
        if self.path is None or (self.misses == 0 and self._new == self._old):
            return
        doc = {"format": FORMAT, "token": self.token, "code": _CODE, "sections": self._new}
        try:
            atomic_write_bytes(self.path, json.dumps(doc, separators=(",", ":")).encode())
        except OSError:
            pass


def _stat_keys(paths: list[str]) -> list[tuple] | None:
    """``FileHasher``'s key of each file, (path, size, mtime_ns, ctime_ns, inode); None when one is
    missing or unreadable (such an episode is recomputed every time, as it is quarantined later)."""
    try:
        return [(p, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for p in paths for st in (os.stat(p),)]
    except (OSError, ValueError):
        return None
