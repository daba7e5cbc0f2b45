"""Parts stay put: adding, changing or removing k episodes encodes those k episodes only.

The cheap ``poses`` stage over NaVILA records written without images (poses read only records),
through the CLI: ``episodes_built`` of the run summary counts what was encoded; every episode's
arrays must equal a fresh build's, and ``navcache verify`` must pass on caches with dead rows.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from navcache.cache_specs import open_cache
from navcache.cache_specs.layout import PARTS
from navcache.cache_specs.verify import verify_cache
from navcache.pipeline.config import load_config
from navcache.pipeline.runner import ExtractOptions, extract
from tests.helpers import cache_checksums, run_cli

N = 2000
POSES = "cache/nav/train/poses"


def write_records(root: Path, ids: list[str], shift: dict[str, float] | None = None) -> Path:
    """NaVILA annotations + poses for ``ids`` (no image files: the poses stage never reads them);
    ``shift`` moves the poses of some episodes (a changed input)."""
    root.mkdir(parents=True, exist_ok=True)
    recs, poses = [], {}
    for vid in ids:
        n = 5 + int(vid[2:]) % 7
        recs.append({"video_id": vid, "frames": [f"{vid}/frame_{k:03d}.jpg" for k in range(n)], "q": "go", "a": "stop"})
        x0 = int(vid[2:]) * 0.01 + (shift or {}).get(vid, 0.0)
        poses[vid] = [[x0 + 0.2 * k, 0.1 * k, 0.03 * k] for k in range(n)]
    (root / "annotations_train.json").write_text(json.dumps(recs))
    (root / "poses_train.json").write_text(json.dumps(poses))
    return root


def odd(rng: random.Random, k: int) -> list[str]:
    """``k`` new ids at random positions in id order (the base uses even numbers only)."""
    return [f"ep{2 * n + 1:05d}" for n in rng.sample(range(N), k)]


def write_config(folder: Path, data: Path, part_size: int = 64, chunk_rows: int = 64) -> Path:
    cfg = {"cache_root": "cache", "chunk_rows": chunk_rows,
           "datasets": {"nav": {"source": "navila", "root": str(data), "splits": ["train"], "stages": ["poses"], "part_size": part_size}}}
    path = folder / "navcache.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli_extract(folder: Path, cfg: Path, *extra: str) -> dict:
    doc = json.loads(run_cli("extract", "-c", str(cfg), "--json", *extra, cwd=folder).stdout)
    assert doc["errors"] == [], doc["errors"]
    return doc["stages"][0]


def assert_same_episodes(cache: Path, fresh: Path) -> None:
    a, b = open_cache(cache), open_cache(fresh)
    assert a.episodes == b.episodes and a.index["status"].to_list() == b.index["status"].to_list()
    for name in a.array_names:
        np.testing.assert_array_equal(a.load(name), b.load(name))
    ia, la = a.offsets()
    ib, lb = b.offsets()
    assert (ia == ib).all() and (la == lb).all()
    for eid in a.episodes[::97]:
        for name, v in a[eid].items():
            np.testing.assert_array_equal(v, b[eid][name])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A built 2,000-episode poses cache: (folder, ids); ids are even numbers, so odd ones can be
    inserted anywhere in id order."""
    folder = tmp_path_factory.mktemp("stable_base")
    ids = [f"ep{2 * i:05d}" for i in range(N)]
    cfg = write_config(folder, write_records(folder / "data", ids))
    st = cli_extract(folder, cfg)
    assert st["episodes_built"] == N and st["finalized"]
    return folder, ids


def copy_base(base, tmp_path: Path) -> Path:
    folder, _ = base
    shutil.copytree(folder / "cache", tmp_path / "cache")
    return tmp_path


def fresh_build(tmp_path: Path, data: Path, **kw) -> Path:
    f = tmp_path / "fresh"
    f.mkdir()
    st = cli_extract(f, write_config(f, data, **kw))
    assert st["episodes_built"] == st["episodes_ok"] + st["episodes_quarantined"]
    return f / POSES


@pytest.mark.slow
@pytest.mark.parametrize("edit", ["add", "change", "remove"])
def test_one_percent_edit_encodes_only_those_episodes(base, tmp_path, edit):
    _, ids = base
    rng = random.Random({"add": 1, "change": 2, "remove": 3}[edit])
    k = N // 100
    shift: dict[str, float] = {}
    new_ids = list(ids)
    if edit == "add":
        new_ids = sorted(new_ids + odd(rng, k))
    elif edit == "change":
        shift = {vid: 5.0 for vid in rng.sample(ids, k)}
    else:
        gone = set(rng.sample(ids, k))
        new_ids = [i for i in ids if i not in gone]
    folder = copy_base(base, tmp_path)
    data = write_records(folder / "data", new_ids, shift)
    cfg = write_config(folder, data)
    st = cli_extract(folder, cfg)
    encoded = st["episodes_built"]
    assert encoded <= 2 * k and encoded == (0 if edit == "remove" else k)
    assert st["finalized"] and st["episodes_ok"] == len(new_ids)
    cache = folder / POSES
    assert_same_episodes(cache, fresh_build(tmp_path, data))
    assert run_cli("verify", str(cache), cwd=folder).returncode == 0
    assert verify_cache(cache) == []
    # and nothing is left to do
    again = cli_extract(folder, cfg)
    assert again["episodes_built"] == 0 and again["parts_built"] == 0


def test_compaction_copies_rows_without_encoding(base, tmp_path):
    _, ids = base
    folder = copy_base(base, tmp_path)
    cache = folder / POSES
    before = open_cache(cache)
    parts_before = set(before.manifest["parts"])
    victim = before.index.filter(before.index["part"] == "part-00003")["episode_id"].to_list()
    keep = set(victim[:10])  # 10 of 64 live: a dead-heavy part
    new_ids = [i for i in ids if i not in victim or i in keep]
    checked = new_ids[::41] + sorted(keep)
    want = {eid: before[eid] for eid in checked}  # read now: the superseded part is swept below
    st = cli_extract(folder, write_config(folder, write_records(folder / "data", new_ids)))
    assert st["episodes_built"] == 0 and st["parts_built"] == 0  # no encoder call
    after = open_cache(cache)
    assert "part-00003" not in after.manifest["parts"] and not (cache / PARTS / "part-00003").exists()
    moved = set(after.index.filter(after.index["episode_id"].is_in(sorted(keep)))["part"].to_list())
    assert moved and moved.isdisjoint(parts_before)  # the live rows were copied into a new part
    for eid in checked:
        for name, v in after[eid].items():
            np.testing.assert_array_equal(v, want[eid][name])
    assert verify_cache(cache) == []
    assert_same_episodes(cache, fresh_build(tmp_path, folder / "data"))


def test_kill_during_an_incremental_rebuild_then_rerun_is_identical(base, tmp_path, monkeypatch):
    import navcache.cache_specs.finalize as fin
    import navcache.cache_specs.parts as parts_mod

    _, ids = base
    rng = random.Random(7)
    added = sorted(ids + odd(rng, 40))
    gone = set(ids[192:232] + ids[320:360])  # parts 3 and 5 keep 24 of 64 rows: compacted
    new_ids = [i for i in added if i not in gone]
    shift = {vid: 1.0 for vid in rng.sample(new_ids, 30)}
    ref = copy_base(base, tmp_path / "ref")
    cfg_ref = write_config(ref, write_records(ref / "data", new_ids, shift), part_size=32)
    assert not extract(load_config(cfg_ref), ExtractOptions("train")).errors

    class Killed(BaseException):
        pass

    folder = copy_base(base, tmp_path / "killed")
    cfg = write_config(folder, write_records(folder / "data", new_ids, shift), part_size=32)
    # each run dies at another step: after one new part, after one compacted part, before the
    # manifest, before the sweep
    for target, name, survive in ((parts_mod, "commit_part", 1), (fin, "copy_part", 1), (fin, "write_cache_files", 0), (fin, "sweep", 0)):
        real = getattr(target, name)
        calls = []

        def once(*a, _real=real, _calls=calls, _survive=survive, **k):
            if len(_calls) >= _survive:
                raise Killed
            _calls.append(1)
            return _real(*a, **k)

        monkeypatch.setattr(target, name, once)
        with pytest.raises(Killed):
            extract(load_config(cfg), ExtractOptions("train"))
        monkeypatch.undo()
    s = extract(load_config(cfg), ExtractOptions("train"))
    assert not s.errors and s.stages[0].finalized
    assert cache_checksums(folder / POSES) == cache_checksums(ref / POSES)
    assert sorted(p.name for p in (folder / POSES / PARTS).iterdir()) == sorted(p.name for p in (ref / POSES / PARTS).iterdir())
    assert verify_cache(folder / POSES) == []


def test_shards_after_an_edit_agree_with_a_plain_run(base, tmp_path):
    _, ids = base
    rng = random.Random(11)
    new_ids = sorted(ids + odd(rng, 60))
    shift = {vid: 2.0 for vid in rng.sample(ids, 60)}
    plain = copy_base(base, tmp_path / "plain")
    cfg = write_config(plain, write_records(plain / "data", new_ids, shift), part_size=16)
    assert cli_extract(plain, cfg)["episodes_built"] > 0
    sharded = copy_base(base, tmp_path / "sharded")
    cfg = write_config(sharded, write_records(sharded / "data", new_ids, shift), part_size=16)
    built = 0
    for i in range(2):  # shard 1 plans after shard 0 committed its parts: the same plan
        st = cli_extract(sharded, cfg, "--shard", f"{i}/2")
        assert 0 < st["parts_built"] < st["parts_total"] and not st["finalized"]
        built += st["episodes_built"]
    assert built == 120
    st = cli_extract(sharded, cfg)
    assert st["parts_built"] == 0 and st["finalized"]
    assert cache_checksums(sharded / POSES) == cache_checksums(plain / POSES)
    assert verify_cache(sharded / POSES) == []


def test_chunk_rows_is_layout_only(base, tmp_path):
    _, ids = base
    folder = copy_base(base, tmp_path)
    before = cache_checksums(folder / POSES)
    st = cli_extract(folder, write_config(folder, write_records(folder / "data", ids), chunk_rows=7))
    assert st["episodes_built"] == 0 and cache_checksums(folder / POSES) == before
    more = sorted(ids + ["ep00001", "ep00003"])
    st = cli_extract(folder, write_config(folder, write_records(folder / "data", more), chunk_rows=7))
    assert st["episodes_built"] == 2 and verify_cache(folder / POSES) == []
    assert_same_episodes(folder / POSES, fresh_build(tmp_path, folder / "data", chunk_rows=64))
