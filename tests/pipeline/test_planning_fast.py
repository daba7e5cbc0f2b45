"""Planning in seconds (pipeline/fingerprint.py, pipeline/encoders/weights.py, pipeline/safepaths.py):
status reads the memo extract filled and imports no transformers; weights are hashed once per file
version; memo writes are batched and a kill loses only the unflushed entries; the memoised path
resolver gives resolve_under's answers."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from navcache.pipeline.config import load_config
from navcache.pipeline.fingerprint import FileHasher, memo_hasher
from navcache.pipeline.runner import ExtractOptions, extract, plan_all
from navcache.pipeline.safepaths import Resolver, UnsafePath, resolve_under
from navcache.pipeline.summary import RunSummary
from tests.helpers import REPO, make_navila, write_project


@pytest.fixture
def built(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("NAVCACHE_HOME", str(tmp_path / "home"))
    data = make_navila(tmp_path / "data", n_episodes=3)
    cfg = write_project(tmp_path, data, tiny_model, part_size=2)
    time.sleep(3.1)  # past the memo's racy window (3 s; ctimes cannot be set back): extract's hashes are trusted
    assert not extract(load_config(cfg), ExtractOptions("train")).errors
    return tmp_path, cfg


@pytest.mark.slow
def test_status_on_an_up_to_date_cache_reads_no_file_and_imports_no_transformers(built):
    tmp, cfg = built
    project = load_config(cfg)
    hasher = memo_hasher(project.cache_root)
    try:
        plans = plan_all(project, ExtractOptions("train", dry_run=True), RunSummary(dry_run=True), hasher)
    finally:
        hasher.close()
    assert all(p.finalized and not p.todo for p in plans)
    assert hasher.reads == 0, "status re-read input files the extract had hashed"
    p = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "cli.py"), "status", "-c", str(cfg), "--json"],
                       cwd=tmp, capture_output=True, text=True, env=os.environ.copy())
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(p.stdout[p.stdout.index("{"):])
    assert all(s["complete"] and s["missing"] == 0 and s["stale"] == 0 for s in doc["plan"])
    imported = {line.split("|")[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}
    assert "navcache.pipeline.plan" in imported  # the trace is of the planning process
    assert not {m for m in imported if m.split(".")[0] == "transformers"}, "planning imported transformers"


def test_weights_are_hashed_once_per_file_version(tmp_path, tiny_model, monkeypatch):
    import shutil

    import navcache.pipeline.fingerprint as fingerprint
    from navcache.pipeline.encoders.weights import weights_fingerprint

    monkeypatch.setenv("NAVCACHE_HOME", str(tmp_path / "home"))
    model = shutil.copytree(tiny_model, tmp_path / "model")
    old = os.stat(model / "config.json").st_mtime_ns - 3600 * 10**9
    for f in model.iterdir():
        os.utime(f, ns=(old, old))  # files older than the racy window (their ctime is not: see below)
    real, read = fingerprint.sha256_file, []
    monkeypatch.setattr(fingerprint, "sha256_file", lambda p: read.append(Path(p).name) or real(p))
    monkeypatch.setattr(FileHasher, "__init__", _aged(FileHasher.__init__))
    first = weights_fingerprint(str(model))
    assert sorted(read) == sorted(f.name for f in model.iterdir() if f.name != "navcache_provenance.json")
    read.clear()
    assert weights_fingerprint(str(model)) == first and read == [], "unchanged weights were hashed again"
    w = next(model.glob("*.safetensors"))
    w.write_bytes(w.read_bytes())  # a new file version, same content: read once, same fingerprint
    os.utime(w, ns=(old, old))
    assert weights_fingerprint(str(model)) == first and read == [w.name]


def _aged(init):
    """FileHasher with racy_s=0: the copies' ctimes are seconds old, and waiting 3 s is no test."""
    def __init__(self, db=None, racy_s=3.0, batch=50_000):
        init(self, db, 0.0, batch)
    return __init__


def test_encoder_facts_come_from_the_memo_as_transformers_reads_them(tmp_path, tiny_model, monkeypatch):
    from navcache.pipeline.encoders.hf_vision import EncoderSettings, HFVisionEncoder

    monkeypatch.setenv("NAVCACHE_HOME", str(tmp_path / "home"))
    enc = HFVisionEncoder(EncoderSettings(model=str(tiny_model), device="cpu"))
    assert enc.facts() == enc._read_facts()  # first call: computed and stored
    assert (tmp_path / "home" / "metadata.sqlite").exists()
    assert enc.facts() == enc._read_facts()  # second: from the memo, equal to transformers' reading
    assert enc.hidden_size() == 48 and enc.patch_size() == 16 and enc.architecture() == "DINOv3ViTConfig"


def test_memo_writes_are_batched(tmp_path):
    files = [tmp_path / f"f{i}" for i in range(7)]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 10)
    h = FileHasher(tmp_path / "memo.sqlite", batch=3)
    for f in files:
        h(f)
    assert h.commits == 2 and _rows(tmp_path / "memo.sqlite") == 6  # the 7th waits for flush/close
    h.flush()
    assert h.commits == 3 and _rows(tmp_path / "memo.sqlite") == 7
    h.flush()
    assert h.commits == 3  # nothing pending: no empty transaction
    h.close()


def _rows(db: Path) -> int:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT COUNT(*) FROM h").fetchone()[0]


KILLED = """
import os, signal, sys
from pathlib import Path
from navcache.pipeline.fingerprint import FileHasher
files = sorted(Path(sys.argv[1]).glob("f*"))
h = FileHasher(Path(sys.argv[2]), batch=4)
for i, f in enumerate(files):
    h(f)
    if i == 9:
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_kill_loses_only_the_unflushed_entries_and_never_corrupts_the_memo(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(20):
        (data / f"f{i:02d}").write_bytes(bytes([i]) * 1000)
    db = tmp_path / "memo.sqlite"
    p = subprocess.run([sys.executable, "-c", KILLED, str(data), str(db)], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL, p.stderr
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = c.execute("SELECT path, sha FROM h ORDER BY path").fetchall()
    assert [Path(r[0]).name for r in rows] == [f"f{i:02d}" for i in range(8)]  # two batches of 4; files 8, 9 lost
    assert all(sha == hashlib.sha256(Path(path).read_bytes()).hexdigest() for path, sha in rows)
    h = FileHasher(db)
    assert [h(data / f"f{i:02d}") for i in range(20)] == [hashlib.sha256(bytes([i]) * 1000).hexdigest() for i in range(20)]
    h.close()


def test_the_resolver_answers_as_resolve_under(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "x.jpg").write_bytes(b"x")
    (root / "a" / "b" / "y.jpg").write_bytes(b"y")
    (root / "top.jpg").write_bytes(b"t")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "y.jpg").write_bytes(b"y")
    (root / "a" / "in_link.jpg").symlink_to(root / "a" / "b" / "x.jpg")
    (root / "a" / "out_link.jpg").symlink_to(outside / "y.jpg")
    (root / "dir_link").symlink_to(root / "a")
    (root / "out_dir").symlink_to(outside)
    (root / "a" / "up").symlink_to(tmp_path)  # "a/up/root" names the root itself
    (root / "a" / "b_link").symlink_to(root / "a" / "b")  # a linked folder below a real one
    (root / "a" / "b" / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    (root / "a" / "b" / "loop.jpg").symlink_to(root / "a" / "b" / "loop.jpg")
    (root / "a" / "b" / "rel_up.jpg").symlink_to("../../../outside/y.jpg")
    rels = ["a/b/x.jpg", "a/in_link.jpg", "a/out_link.jpg", "dir_link/b/x.jpg", "dir_link/out_link.jpg", "out_dir/y.jpg",
            "a/missing.jpg", "nope/missing.jpg", "a/../a/b/x.jpg", "../outside/y.jpg", "dir_link/../a/b/x.jpg", "a//b/x.jpg",
            "./a/b/x.jpg", str(root / "a/b/x.jpg"), str(outside / "y.jpg"), ".", "a/..", "", " ", "http://x/y.jpg", "s3:b/k",
            "C:\\x.jpg", "a/up/root", "a/up/outside/y.jpg", "a/b\x00.jpg", 7, "a/b/x.jpg", "a/b_link/x.jpg", "a/b_link/rel_up.jpg",
            "a/b/dangling.jpg", "a/b/loop.jpg", "a/b/rel_up.jpg", "a/b/", "a/b/.", "a/b/..", "a/./b/x.jpg", "a/b/x.jpg/z", "\u00e9/x.jpg",
            "a/b/x.jpg\n", "frame:1.jpg", "a/b/y.jpg", "a/b/missing.jpg", "a/b/s3:y.jpg", "a/b/\u00e9.jpg", "top.jpg",
            "/top.jpg", "//top.jpg", "/a/b/x.jpg"]
    for allow in (False, True):
        resolve = Resolver(root, allow)
        for rel in rels:
            want = _outcome(lambda: resolve_under(root, rel, allow))
            assert _outcome(lambda: resolve(rel)) == want, (rel, allow)
            assert _outcome(lambda: resolve(rel)) == want, (rel, allow)  # memoised answer, refusals too
        fresh = Resolver(root, allow)
        strs = [r for r in rels if isinstance(r, str)]
        first_refused = next((_outcome(lambda: resolve_under(root, r, allow)) for r in strs
                              if _outcome(lambda: resolve_under(root, r, allow))[0] == "refused"), None)
        assert _outcome(lambda: fresh.check_all(strs)) == (first_refused or ("ok", None))
        assert _outcome(lambda: fresh.check_all(strs)) == (first_refused or ("ok", None))  # from the memo
        fresh = Resolver(root, allow)
        fresh.check_all(["a/b/x.jpg", "top.jpg"])  # the folders are known: the others take check_all's short cut where they can
        fresh.check_all([r for r in strs if _outcome(lambda: resolve_under(root, r, allow))[0] == "ok"])
        for rel in strs:
            assert _outcome(lambda: Path(fresh.check(rel))) == _outcome(lambda: resolve_under(root, rel, allow)), (rel, allow)


def _outcome(fn):
    try:
        return ("ok", fn())
    except UnsafePath as e:
        return ("refused", str(e))


def test_stage_fingerprints_are_hash_obj_of_the_whole_document():
    from navcache.pipeline.fingerprint import hash_obj, stage_fingerprints

    base = {"spec": {"arrays": {"cls": [1, 2.5, None]}, "ünïcode": "ß"}, "stage": "frame-features", "code_version": "1",
            "identity": {"encoder": {"model": "m", "w": "ab" * 32}}, "source": {"kind": "navila", "options": {"num_frames": 8}}}
    content = {f"ep{i}": hashlib.sha256(bytes([i])).hexdigest() for i in range(5)}
    for ups in ({}, {"keyframes": {e: c[::-1] for e, c in content.items()}},
                {"b": {e: "1" for e in content}, "a": {e: c[:7] for e, c in content.items()}}):
        want = {e: hash_obj({"stage": base, "episode": c, "upstream": {u: ups[u][e] for u in ups}}) for e, c in content.items()}
        assert stage_fingerprints(base, content, ups) == want
    from navcache.cache_specs.layout import canonical_json

    for obj in (base, [1, 2.5, -0.0, 1e300, "é\u2028", None, True, {"b": 1, "a": [2]}], "x"):
        assert hash_obj(obj) == hashlib.sha256(canonical_json(obj)).hexdigest()  # the prebuilt encoder is canonical_json
    with pytest.raises(ValueError):
        hash_obj(float("nan"))


def test_prune_deletes_the_rows_of_changed_and_gone_files_only(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    files = {n: data / n for n in ("same", "changed", "gone", "unnamed_gone", "unnamed_same")}
    for f in files.values():
        f.write_bytes(f.name.encode())
    db = tmp_path / "memo.sqlite"
    h = FileHasher(db, racy_s=0.0)
    for f in files.values():
        h(f)
    h.close()
    files["changed"].write_bytes(b"new content, new size")
    files["gone"].unlink()
    files["unnamed_gone"].unlink()
    h = FileHasher(db, racy_s=0.0)
    for n in ("same", "changed", "gone"):  # this run names three; the other two only the memo knows
        h(files[n])
    assert h.reads == 1  # "changed" only
    assert h.prune(full=False) == 2  # the old "changed" row and "gone": judged from the lookups, no stat
    assert h.prune(full=True) == 1  # "unnamed_gone", found by a stat
    assert h.prune() == 0
    h.close()
    with sqlite3.connect(db) as c:
        kept = sorted(Path(r[0]).name for r in c.execute("SELECT path FROM h"))
    assert kept == ["changed", "same", "unnamed_same"]
    h = FileHasher(db, racy_s=0.0)
    assert [h(files[n]) for n in kept] == [hashlib.sha256(files[n].read_bytes()).hexdigest() for n in kept]
    assert h.reads == 0  # every surviving row still serves its file
    h.close()


def test_fast_pose_check_agrees_with_the_detailed_one():
    from navcache.pipeline.sources import navila

    def slow(poses, n):
        out = []
        if not isinstance(poses, list):
            return None
        for p in poses:
            if not isinstance(p, list) or len(p) != 3 or not all(navila._is_real(v) and navila._finite(v) for v in p):
                return None
            out.append([float(v) for v in p])
        return out if len(out) == n else None

    cases = [[[0.0, 1.5, -2.0]] * 3, [[0, 1, 2], [3.5, 4, 5]], [[1, 2, True]], [[1.0, 2.0, float("nan")]], [[1.0, 2.0, float("inf")]],
             [[1.0, "2", 3.0]], [[1.0, 2.0]], [(1.0, 2.0, 3.0)], [[10**400, 0, 0]], [[1e308, 1e308, 1e308]], "poses", [], [[None, 0, 0]],
             [[1.0, 2.0, 3.0], 4]]
    for poses in cases:
        n = len(poses) if isinstance(poses, list) else 1
        fast = navila._poses_fast(poses, n)
        if fast is not None:
            assert fast == slow(poses, n) and all(type(v) is float for p in fast for v in p), poses
        assert navila._check_poses(poses, n)[0] == slow(poses, n), poses


@pytest.mark.slow
def test_status_on_the_demo_imports_neither_transformers_nor_torch(demo_caches):
    from navcache.pipeline.encoders.base import no_gpu_device_nodes

    p = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "cli.py"), "status", "--split", "train", "--json"],
                       cwd=demo_caches, capture_output=True, text=True, env=os.environ.copy())
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(p.stdout[p.stdout.index("{"):])
    assert doc["plan"] and all(s["complete"] and s["missing"] == 0 and s["stale"] == 0 for s in doc["plan"])
    imported = {line.split("|")[-1].strip().split(".")[0] for line in p.stderr.splitlines() if line.startswith("import time:")}
    assert "navcache" in imported and "transformers" not in imported
    # "device: auto" is answered without torch where no GPU can be (here: no device node);
    # on a GPU machine planning asks torch, which then is the truthful answer's price
    assert "torch" not in imported or not no_gpu_device_nodes()


def test_auto_device_without_torch_agrees_with_torch():
    import torch

    from navcache.pipeline.encoders.base import no_gpu_device_nodes, resolve_device, resolve_precision

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if no_gpu_device_nodes():
        assert not torch.cuda.is_available()
    assert resolve_device("cpu") == "cpu" and resolve_precision("auto", "cpu") == "fp32"


def test_batched_episode_fingerprints_are_the_per_episode_ones(tmp_path):
    """``episode_fingerprints`` (one ``hasher.many`` over every episode's files, what planning
    calls) gives each episode the string ``episode_fingerprint`` gives it alone, including an
    episode whose file is gone and files that several episodes share."""
    from navcache.pipeline.fingerprint import episode_fingerprint, episode_fingerprints
    from navcache.pipeline.sources import make_source

    data = make_navila(tmp_path / "data", n_episodes=3)
    eps = make_source("navila", data).episodes("train")
    assert len({f for e in eps for f in e.files}) < sum(len(e.files) for e in eps)  # shared frames
    Path(eps[-1].files[0]).unlink()
    want = {e.episode_id: episode_fingerprint(e, data, FileHasher(), record_keys=("instruction",)) for e in eps}
    got = episode_fingerprints(eps, data, FileHasher(read_threads=2), lambda e: e.files, ("instruction",))
    assert got == want and len(set(got.values())) == len(eps)
