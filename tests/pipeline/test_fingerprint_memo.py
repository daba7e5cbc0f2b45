"""The file-hash memo on coarse-clock filesystems (pipeline/fingerprint.py), and the shared-filesystem
assumptions of the commit protocol: fsync before every publishing rename, renames within one
folder, no trust in timestamps (README "Running on a cluster")."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from navcache.cache_specs.layout import TMP_PREFIX
from navcache.pipeline.config import load_config
from navcache.pipeline.fingerprint import FileHasher
from navcache.pipeline.runner import ExtractOptions, extract
from tests.helpers import cache_checksums, make_navila, write_project


def rewrite_keeping_stat(path: Path, data: bytes) -> None:
    """Same size, same inode, mtime put back: what a coarse clock makes of a quick rewrite."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_ino == st.st_ino and os.stat(path).st_mtime_ns == st.st_mtime_ns


@pytest.mark.parametrize("persist", [False, True])
def test_rewrite_within_the_same_mtime_changes_the_hash(tmp_path, persist):
    f = tmp_path / "frame.jpg"
    f.write_bytes(b"A" * 4096)
    hasher = FileHasher(tmp_path / "memo.sqlite" if persist else None)
    assert hasher(f) == hashlib.sha256(b"A" * 4096).hexdigest()
    rewrite_keeping_stat(f, b"B" * 4096)
    assert hasher(f) == hashlib.sha256(b"B" * 4096).hexdigest()
    hasher.close()
    again = FileHasher(tmp_path / "memo.sqlite" if persist else None)
    assert again(f) == hashlib.sha256(b"B" * 4096).hexdigest()
    again.close()


def test_an_entry_recorded_within_the_racy_window_is_not_trusted(tmp_path):
    """A fresh file (its mtime within ``racy_s`` of hashing) is re-read at every lookup, even
    with its key unchanged; once old enough, the memo answers without reading."""
    f = tmp_path / "poses.json"
    f.write_bytes(b"[1, 2, 3]")
    hasher = FileHasher(tmp_path / "memo.sqlite", racy_s=3600)
    first = hasher(f)
    assert hasher(f) == first and hasher.reads == 2, "an entry recorded right after the write was trusted"
    old = os.stat(f).st_mtime_ns - 7200 * 10**9  # an old file (its ctime is recent: racy_s below that)
    os.utime(f, ns=(old, old))
    aged = FileHasher(tmp_path / "memo.sqlite", racy_s=0.0)
    assert aged(f) == first and aged(f) == first and aged.reads == 1
    aged.close()
    hasher.close()
    persisted = FileHasher(tmp_path / "memo.sqlite", racy_s=0.0)
    assert persisted(f) == first and persisted.reads == 0, "the persisted entry was not used"
    persisted.close()


class Trace:
    """Records fsync'd paths and renames (the OS calls, wrapped; our code runs unchanged)."""

    def __init__(self, monkeypatch):
        self.synced: set[str] = set()
        self.events: list[tuple] = []
        real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

        def fsync(fd):
            real_fsync(fd)
            path = os.readlink(f"/proc/self/fd/{fd}")
            self.synced.add(path)
            self.events.append(("fsync", path))

        def renamer(real):
            def rename(src, dst, *a, **k):
                src, dst = os.path.realpath(src), os.path.join(os.path.realpath(os.path.dirname(dst)), os.path.basename(dst))
                unsynced = [] if not os.path.isdir(src) else [
                    p for d, dirs, files in os.walk(src) for p in [d, *(os.path.join(d, x) for x in files)] if p not in self.synced]
                if os.path.isfile(src) and src not in self.synced:
                    unsynced = [src]
                real(src, dst, *a, **k)
                self.events.append(("rename", src, dst, unsynced))
            return rename

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "rename", renamer(real_rename))
        monkeypatch.setattr(os, "replace", renamer(real_replace))


def test_every_publishing_rename_is_fsynced_within_one_folder(tmp_path, tiny_model, monkeypatch):
    data = make_navila(tmp_path / "data", n_episodes=3)
    cfg = write_project(tmp_path, data, tiny_model, part_size=2)
    trace = Trace(monkeypatch)
    s = extract(load_config(cfg), ExtractOptions("train"))
    monkeypatch.undo()
    assert not s.errors
    publishes = [(i, e) for i, e in enumerate(trace.events) if e[0] == "rename" and os.path.basename(e[1]).startswith(TMP_PREFIX)
                 and not os.path.basename(e[2]).startswith(TMP_PREFIX)]
    names = {os.path.basename(e[2]) for _, e in publishes}
    assert {"part-00000", "index.parquet", "manifest.json"} <= names, names
    for i, (_, src, dst, unsynced) in publishes:
        assert os.path.dirname(src) == os.path.dirname(dst), f"{src} -> {dst} crosses folders"
        assert unsynced == [], f"renamed into {dst} before fsync: {unsynced}"
        later = {e[1] for e in trace.events[i + 1:] if e[0] == "fsync"}
        assert os.path.dirname(dst) in later, f"the folder of {dst} was not fsynced after the rename"


def test_timestamps_decide_nothing(tmp_path, tiny_model):
    """Every file of the dataset and the caches stamped with one coarse time: a rerun builds
    nothing and the caches stay identical (parts are matched by content fingerprints)."""
    data = make_navila(tmp_path / "data", n_episodes=3)
    cfg = write_project(tmp_path, data, tiny_model, part_size=2)
    assert not extract(load_config(cfg), ExtractOptions("train")).errors
    caches = [tmp_path / "cache/nav/train" / st for st in ("poses", "frame_features")]
    before = [cache_checksums(c) for c in caches]
    for root in (data, tmp_path / "cache"):
        for p in root.rglob("*"):
            os.utime(p, ns=(10**18, 10**18), follow_symlinks=False)
    s = extract(load_config(cfg), ExtractOptions("train"))
    assert not s.errors and sum(x.parts_built for x in s.stages) == 0
    assert [cache_checksums(c) for c in caches] == before
