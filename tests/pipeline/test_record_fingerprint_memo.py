"""The episode fingerprint memo (pipeline/fingerprint_memo.py): with the memo warm, an edited record,
an edited pose and a replaced image each change exactly the affected episodes' fingerprints, to
the values a planner without the memo computes; files too recent for their timestamps are not
trusted; a dry run before the first build writes nothing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from navcache.pipeline.config import load_config
from navcache.pipeline.fingerprint import FileHasher, episode_fingerprint
from navcache.pipeline.fingerprint_memo import FingerprintMemo
from navcache.pipeline.plan import make_stage, plan_split
from navcache.pipeline.sources import make_source
from tests.helpers import make_navila, write_project

MEMO = Path(".navcache") / "fingerprint-memo" / "nav" / "train.json"


@pytest.fixture
def world(tmp_path, tiny_model):
    data = make_navila(tmp_path / "data", n_episodes=3)
    cfg = write_project(tmp_path, data, tiny_model, cache_root=str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    return tmp_path, data, load_config(cfg)


def plan(tmp: Path, project) -> dict[str, dict[str, str]]:
    """{stage: {episode id: fingerprint}} as a fresh process plans (file-hash memo persisted;
    no racy window: ctimes cannot be set back, and the files are on a local file system)."""
    hasher = FileHasher(tmp / "filehash.sqlite", racy_s=0)
    try:
        plans = plan_split(project, "nav", "train", hasher=hasher)
    finally:
        hasher.close()
    return {p.stage_name: {eid: fp for part in p.parts for eid, fp in part.episode_fps.items()} for p in plans}


def cold(tmp: Path, project) -> dict[str, dict[str, str]]:
    """The same without the memo: what every fingerprint must be."""
    (project.cache_root / MEMO).unlink(missing_ok=True)
    out = plan(tmp, project)
    (project.cache_root / MEMO).unlink()
    return out


def warm(project) -> None:
    """The memo answers every episode of both stages (a warm planner hashes nothing)."""
    doc = json.loads((project.cache_root / MEMO).read_text())
    assert sorted(len(v) for v in doc["sections"].values()) == [6, 6]


def changed(a: dict, b: dict) -> dict[str, set[str]]:
    return {s: {e for e in a[s].keys() | b[s].keys() if a[s].get(e) != b[s].get(e)} for s in a}


def edit_json(path: Path, fn) -> None:
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def test_each_edit_changes_exactly_the_affected_episodes_with_the_memo_warm(world):
    tmp, data, project = world
    first = plan(tmp, project)
    assert (project.cache_root / MEMO).is_file()
    assert plan(tmp, project) == first == cold(tmp, project)
    plan(tmp, project)
    warm(project)

    # an annotation record: another (existing) image as the last frame of ep001-4
    edit_json(data / "annotations_train.json", lambda recs: [r["frames"].__setitem__(-1, "ep001/frame_009.jpg") for r in recs if r["video_id"] == "ep001-4"])
    after = plan(tmp, project)
    assert changed(first, after) == {"frame-features": {"ep001-4"}, "poses": set()}
    assert after == cold(tmp, project)

    # a pose of ep002-4
    plan(tmp, project)
    warm(project)
    edit_json(data / "poses_train.json", lambda poses: poses["ep002-4"][1].__setitem__(0, 9.5))
    again = plan(tmp, project)
    assert changed(after, again) == {"frame-features": set(), "poses": {"ep002-4"}}
    assert again == cold(tmp, project)

    # an image replaced by one of the same size (in place: same inode, new mtime and ctime)
    plan(tmp, project)
    warm(project)
    img = data / "train" / "ep000" / "frame_004.jpg"
    blob = bytearray(img.read_bytes())
    blob[-10] ^= 0xFF
    img.write_bytes(bytes(blob))
    source = make_source("navila", data)
    readers = {e.episode_id for e in source.episodes("train") if str(img.resolve()) in map(str, e.files)}
    assert readers  # the frame is sampled by some history
    last = plan(tmp, project)
    assert changed(again, last) == {"frame-features": readers, "poses": set()}
    assert last == cold(tmp, project)


def test_memo_answers_as_episode_fingerprint_and_trusts_no_recent_file(world):
    tmp, data, project = world
    source = make_source("navila", data)
    episodes = source.episodes("train")
    stage = make_stage(project, "nav", "frame-features", source)
    expect = {e.episode_id: episode_fingerprint(e, data, FileHasher(), stage.files_read(e), stage.record_keys) for e in episodes}
    fresh = lambda: FileHasher(racy_s=0)  # noqa: E731  (see ``plan``)

    def run(hasher: FileHasher) -> FingerprintMemo:
        memo = FingerprintMemo.open(project.cache_root, "nav", "train", source.listing_token)
        assert memo.fingerprints("s", episodes, data, hasher, stage.files_read, stage.record_keys) == expect
        memo.save()
        return memo

    assert run(fresh()).misses == len(episodes)
    assert run(fresh()).hits == len(episodes)
    # a file written just now, hashed by a memo with the usual racy window: the hashes are right
    # but not trusted for its key (a coarse clock could hide a second write), so not remembered
    img = Path(episodes[0].files[0])
    img.write_bytes(img.read_bytes())
    readers = sum(str(img) in map(str, e.files) for e in episodes)
    expect = {e.episode_id: episode_fingerprint(e, data, FileHasher(), stage.files_read(e), stage.record_keys) for e in episodes}
    for _ in range(2):
        memo = run(FileHasher())
        assert (memo.hits, memo.misses) == (len(episodes) - readers, readers)
    # another listing token (an edited annotation): nothing is answered from the old memo
    other = FingerprintMemo.open(project.cache_root, "nav", "train", "another token")
    other.fingerprints("s", episodes, data, fresh(), stage.files_read, stage.record_keys)
    assert other.hits == 0


def test_a_damaged_memo_is_an_empty_one_and_a_dry_run_writes_none(world, tmp_path_factory):
    tmp, data, project = world
    first = plan(tmp, project)
    (project.cache_root / MEMO).write_text('{"format": 1, "tok')
    assert plan(tmp, project) == first
    json.loads((project.cache_root / MEMO).read_text())  # rewritten whole
    shutil.rmtree(project.cache_root)
    assert plan(tmp, project) == first
    assert not project.cache_root.exists()
