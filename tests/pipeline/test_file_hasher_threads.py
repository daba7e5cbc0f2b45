"""``FileHasher.many`` reads the files it must hash in parallel threads: the same hashes, in the
caller's order, each file read once, the memo filled as by one thread, with or without SQLite."""
from __future__ import annotations

import os

import pytest

from navcache.cache_specs.layout import sha256_file
from navcache.pipeline.fingerprint import FileHasher


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("persist", [False, True])
def test_many_hashes_misses_in_threads_in_order(tmp_path, threads, persist):
    files = []
    for i in range(40):
        f = tmp_path / "in" / f"{i:03d}.bin"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(os.urandom(1000 + 997 * i))
        files.append(f)
    paths = [str(f) for f in files[:20]] + [str(tmp_path / "in" / "missing.bin")] + [str(f) for f in files[20:]] + [str(files[3])]
    db = tmp_path / "memo" / "h.sqlite" if persist else None
    h = FileHasher(db, racy_s=0.0, read_threads=threads)
    want = [sha256_file(f) for f in files]
    got = h.many(paths)
    assert got == want[:20] + ["missing"] + want[20:] + [want[3]]
    assert h.reads == 40  # every file once, whatever the threads (the repeated one read once too)
    assert h.many(paths) == got and h.reads == 40  # now all memo hits
    h.close()
    if persist:  # the threads' entries reached the persisted memo
        again = FileHasher(db, racy_s=0.0, read_threads=threads)
        assert again.many(paths) == got and again.reads == 0
        again.close()
