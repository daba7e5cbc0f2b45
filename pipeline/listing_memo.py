"""A split's listing remembered across runs: an unchanged annotation set over unchanged folders is
not parsed, checked and resolved again (planning's largest cost after the ``stat`` of every input).

What a listing returns depends on two things: the bytes of the files it parses (with the options
and the listing code: the source's ``listing_token``) and, through the path checks, the file
system: which names exist and which are symlinks (``safepaths.Resolver``). The memo keeps the
episodes and report of one listing with its token, the real image folder, and the version (path,
mtime, ctime, inode) of every folder whose listing the path checks used, and is answered only when
all of them are unchanged. A folder's mtime changes whenever an entry is added, removed, renamed or
replaced (a file turned into a symlink included); a rewritten file keeps its folder's mtime but is
seen by its own ``stat`` in the fingerprints. A listing whose answers did not all come from folder
listings (a symlink followed, a path outside the plain relative form, an unlistable folder:
``Resolver.pure`` false) is not remembered.

Timestamps can be coarse (NFS servers storing seconds) or skewed: as for the file-hash memo, a
folder version is trusted only when its mtime and ctime are more than ``racy_s`` older than the
moment the listing started, so that a change during or right after the listing is never hidden.

One JSON file per (dataset, split) under ``<cache root>/.navcache/listing-memo/``, replaced
atomically (``atomic_write_bytes``); missing, unreadable, foreign or stale is simply a miss. The
memo is a copy of the listing (about the size of the annotation and pose files): the cost of one
JSON parse instead of a parse plus per-record checks and path resolution.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from navcache.cache_specs.layout import atomic_write_bytes

from .sources.base import Episode

FORMAT = 1


class ListingMemo:
    """The remembered listing of one (dataset, split); ``path`` None: nothing is read or written
    (the cache root does not exist yet: a dry run creates nothing)."""

    def __init__(self, path: Path | None, racy_s: float = 3.0):
        self.path = path
        self._racy_ns = int(racy_s * 1e9)
        #: what the last ``load`` did: "hit", "miss" or None (not asked)
        self.outcome: str | None = None

    @classmethod
    def at(cls, cache_root: Path, dataset: str, split: str, racy_s: float = 3.0) -> ListingMemo:
        root = Path(cache_root)
        return cls(root / ".navcache" / "listing-memo" / dataset / f"{split}.json" if root.is_dir() else None, racy_s)

    def load(self, token: str, image_dir: str) -> tuple[list[Episode], dict[str, Any]] | None:
        """(episodes, report) of the listing remembered for ``token`` over ``image_dir`` (the real
        image folder), when every folder it depended on is as it was; else None."""
        self.outcome = "miss"
        if self.path is None:
            return None
        try:
            doc = json.loads(self.path.read_bytes())
            if doc["format"] != FORMAT or doc["token"] != token or doc["image_dir"] != image_dir:
                return None
            for d, size, mtime, ctime, ino in doc["folders"]:
                st = os.stat(d)
                if (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) != (size, mtime, ctime, ino):
                    return None
                if doc["listed_ns"] - max(mtime, ctime) <= self._racy_ns:
                    return None  # changed too close to the listing for its timestamps to tell
            episodes = [Episode(eid, record, tuple(files), quarantine) for eid, record, files, quarantine in doc["episodes"]]
            report = doc["report"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        self.outcome = "hit"
        return episodes, report

    def save(self, token: str, image_dir: str, listed_ns: int, folders: list[str], episodes: list[Episode], report: dict[str, Any]) -> None:
        """Remember a listing that started at ``listed_ns`` and read ``folders``' listings; a
        folder that cannot be stat-ed now, or a read-only cache root, leaves the memo as it was."""
        if self.path is None:
            return
        try:
            versions = [(d, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for d in folders for st in (os.stat(d),)]
            doc = {"format": FORMAT, "token": token, "image_dir": image_dir, "listed_ns": listed_ns, "folders": versions,
                   "episodes": [[e.episode_id, e.record, list(map(os.fspath, e.files)), e.quarantine] for e in episodes],
                   "report": report}
            atomic_write_bytes(self.path, json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode())
        except (OSError, ValueError, TypeError):
            pass

