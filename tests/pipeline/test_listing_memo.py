"""The listing memo (pipeline/listing_memo.py): a remembered NaVILA listing equals a fresh one, and is
answered only while the parsed files' bytes and the folders the path checks read are unchanged: a
frame turned into a symlink out of the root, a new frame file, an edited record or pose each make
it a miss; a listing that followed a symlink, or folders changed too recently for their timestamps,
are never answered from it."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from navcache.pipeline.listing_memo import ListingMemo
from navcache.pipeline.sources.navila import NavilaSource
from tests.helpers import make_navila


def dataset(tmp_path: Path) -> Path:
    """Good records and the usual faults: an unsafe path, a duplicate id, a missing frame, no poses."""
    root = make_navila(tmp_path / "d", n_episodes=3)
    recs = json.loads((root / "annotations_train.json").read_text())
    recs[0]["frames"][1] = "http://example.com/x.jpg"
    recs[3]["video_id"] = recs[2]["video_id"]
    recs[4]["frames"][-1] = "ep002/not_there.jpg"
    recs.append({"video_id": "extra", "frames": ["ep000/frame_000.jpg"], "q": "walk", "a": "stop"})
    (root / "annotations_train.json").write_text(json.dumps(recs))
    return root


def listing(root: Path, memo: ListingMemo | None = None) -> tuple[list, dict]:
    source = NavilaSource(root)
    eps = source.episodes("train", memo=memo)
    return eps, source.report


def memo_at(tmp_path: Path, racy_s: float = 0.0) -> ListingMemo:
    # no racy window: the folders were written just now on a local file system with ns timestamps
    return ListingMemo(tmp_path / "memo" / "train.json", racy_s=racy_s)


def check(root: Path, memo: ListingMemo, outcome: str) -> None:
    got = listing(root, memo)
    assert memo.outcome == outcome
    assert got == listing(root)  # what a listing without the memo gives


def test_a_remembered_listing_equals_a_fresh_one_until_an_input_changes(tmp_path):
    root = dataset(tmp_path)
    memo = memo_at(tmp_path)
    eps, _ = listing(root)
    assert {e.quarantine is not None for e in eps} == {True, False}
    check(root, memo, "miss")
    check(root, memo, "hit")

    frame = root / "train" / "ep001" / "frame_002.jpg"  # sampled by ep001's histories
    (tmp_path / "elsewhere.jpg").write_bytes(frame.read_bytes())
    frame.unlink()
    os.symlink(tmp_path / "elsewhere.jpg", frame)
    check(root, memo, "miss")  # the symlink leaves the root: its episodes are quarantined now
    assert any("outside the dataset root" in (e.quarantine or "") for e in listing(root)[0])
    check(root, memo, "miss")  # a listing that followed a symlink is not remembered
    assert memo.path.is_file()  # (the memo from before stays, for a listing like it)
    frame.unlink()
    shutil.copy(tmp_path / "elsewhere.jpg", frame)
    check(root, memo, "miss")
    check(root, memo, "hit")

    (root / "train" / "ep002" / "not_there.jpg").write_bytes(b"x")  # a new name in a listed folder
    check(root, memo, "miss")
    check(root, memo, "hit")

    ann = root / "annotations_train.json"
    ann.write_bytes(ann.read_bytes())  # rewritten, same bytes: still the same listing
    check(root, memo, "hit")
    recs = json.loads(ann.read_text())
    recs[5]["a"] = "turn left"
    ann.write_text(json.dumps(recs))
    check(root, memo, "miss")
    check(root, memo, "hit")

    poses = root / "poses_train.json"
    doc = json.loads(poses.read_text())
    doc["ep002-4"][0][2] = 1.5
    poses.write_text(json.dumps(doc))
    check(root, memo, "miss")
    poses.unlink()
    check(root, memo, "miss")
    check(root, memo, "hit")


def test_folders_changed_within_the_racy_window_are_not_trusted(tmp_path):
    root = dataset(tmp_path)
    memo = memo_at(tmp_path, racy_s=3600.0)  # every folder "just changed"
    check(root, memo, "miss")
    assert memo.path.is_file()
    check(root, memo, "miss")


def test_a_damaged_memo_is_a_miss(tmp_path):
    root = dataset(tmp_path)
    memo = memo_at(tmp_path)
    check(root, memo, "miss")
    memo.path.write_text(memo.path.read_text()[:-100])
    check(root, memo, "miss")
    check(root, memo, "hit")


def test_a_listing_resolved_outside_the_folder_listings_is_not_remembered(tmp_path):
    root = dataset(tmp_path)
    ann = root / "annotations_train.json"
    recs = json.loads(ann.read_text())
    recs[0]["frames"][1] = "ep000/../../outside.jpg"  # resolved by realpath: its answer is not a folder listing's
    ann.write_text(json.dumps(recs))
    memo = memo_at(tmp_path)
    check(root, memo, "miss")
    assert not memo.path.exists()
    check(root, memo, "miss")
