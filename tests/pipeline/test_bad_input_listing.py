"""Bad input found while LISTING (annotation files, parquet tables, ids, folders): one bad record
is quarantined with a reason, one unreadable file fails its dataset with a reason, and the other
datasets in the same run are still built; cross-file id mismatches reach the run summary.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from navcache.pipeline.config import config_from_dict
from navcache.pipeline.decode import read_video
from navcache.pipeline.errors import DatasetError, Quarantine
from navcache.pipeline.runner import ExtractOptions, extract
from navcache.pipeline.sources.navila import NavilaSource
from tests.helpers import make_navila, run_cli


def _project(tmp: Path, datasets: dict[str, Path]):
    ds = {name: {"source": "navila", "root": str(root), "splits": ["train"], "stages": ["poses"], "part_size": 4}
          for name, root in datasets.items()}
    return config_from_dict({"cache_root": str(tmp / "cache"), "datasets": ds}, tmp)


def _records(root: Path) -> list[dict]:
    return json.loads((root / "annotations_train.json").read_text())


def _poses_stage(summary, dataset: str):
    (s,) = [s for s in summary.stages if s.dataset == dataset and s.stage == "poses"]
    return s


@pytest.fixture
def good(tmp_path) -> Path:
    return make_navila(tmp_path / "good", n_episodes=2)


@pytest.mark.parametrize("damage, fragment", [
    ("1" + "0" * 5000, "unreadable JSON"),                 # an integer past Python's digit limit
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_unreadable_annotation_fails_its_dataset_only(tmp_path, good, damage, fragment):
    bad = make_navila(tmp_path / "bad", n_episodes=2)
    (bad / "annotations_train.json").write_text(damage)
    s = extract(_project(tmp_path, {"bad": bad, "good": good}), ExtractOptions("train"))
    assert len(s.errors) == 1 and s.errors[0].startswith("dataset bad split train:") and fragment in s.errors[0], s.errors
    assert _poses_stage(s, "good").episodes_ok == 4 and _poses_stage(s, "good").finalized


def test_cli_reports_a_listing_failure_as_a_failed_run_not_a_config_error(tmp_path, good):
    (good / "annotations_train.json").write_text("1" + "0" * 5000)
    import yaml

    (tmp_path / "navcache.yaml").write_text(yaml.safe_dump({"cache_root": "cache", "datasets": {"nav": {
        "source": "navila", "root": str(good), "splits": ["train"], "stages": ["poses"]}}}))
    p = run_cli("extract", "--split", "train", "--json", cwd=tmp_path, check=False)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "configuration error" not in p.stderr
    (err,) = json.loads(p.stdout)["errors"]
    assert err.startswith("dataset nav split train:") and "unreadable JSON" in err


def test_bad_values_in_one_record_quarantine_that_record(tmp_path):
    root = make_navila(tmp_path / "d", n_episodes=3)
    recs = _records(root)
    recs[0]["frames"] = float("nan")              # NaN is not strict JSON: it must not break the index
    recs[1]["frames"][0] = "ep000/\ud800.jpg"     # a lone surrogate cannot become a file name
    recs[2]["video_id"] = "<record #0>"           # navcache's own placeholder form
    recs.append(7)                                # not an object: gets placeholder <record #6>
    (root / "annotations_train.json").write_text(json.dumps(recs))  # json escapes the surrogate
    poses = json.loads((root / "poses_train.json").read_text())
    vid = recs[3]["video_id"]
    huge = "[" + ", ".join(["[1" + "0" * 400 + ", 0, 0]"] + ["[0, 0, 0]"] * (len(poses[vid]) - 1)) + "]"  # x overflows a float
    text = json.dumps(poses).replace(json.dumps(poses[vid]), huge, 1)
    (root / "poses_train.json").write_text(text)
    s = extract(_project(tmp_path, {"nav": root}), ExtractOptions("train"))
    assert not s.errors
    st = _poses_stage(s, "nav")
    reasons = {q["episode_id"]: q["reason"] for q in st.quarantined}
    assert "'frames' must be a non-empty list of paths, got float nan" in reasons[recs[0]["video_id"]]
    assert "'frames'[0]: 'ep000/\\ud800.jpg' holds a lone surrogate" in reasons[recs[1]["video_id"]]
    assert "form navcache reserves" in reasons["<record #2>"]
    assert "expected an object" in reasons["<record #6>"]
    assert "not finite" in reasons[vid]
    assert len(reasons) == 5 and st.episodes_ok == 7 - 5 and st.finalized  # 6 records + the non-object


def test_duplicate_keys_are_not_silently_resolved(tmp_path):
    root = make_navila(tmp_path / "d", n_episodes=2)
    recs = _records(root)
    poses = json.loads((root / "poses_train.json").read_text())
    first, second = recs[0]["video_id"], recs[1]["video_id"]
    body = json.dumps(poses)[1:-1]
    (root / "poses_train.json").write_text("{" + body + f", {json.dumps(first)}: {json.dumps(poses[first])}" + "}")
    ann = json.dumps(recs)
    (root / "annotations_train.json").write_text(ann.replace('{"video_id": ' + json.dumps(second),
                                                             '{"q": "x", "video_id": ' + json.dumps(second), 1))
    eps = {e.episode_id: e for e in NavilaSource(root).episodes("train")}
    assert eps[first].quarantine is None and "more than once" in eps[first].record["pose_error"]
    assert eps[first].record["poses"] is None
    (dup,) = [e for e in eps.values() if e.quarantine and "more than once" in e.quarantine]
    assert "['q']" in dup.quarantine and second not in eps


def test_image_folder_symlinked_out_of_the_root_is_refused(tmp_path):
    outside = make_navila(tmp_path / "outside", n_episodes=1)
    root = tmp_path / "d"
    root.mkdir()
    for name in ("annotations_train.json", "poses_train.json"):
        (root / name).write_bytes((outside / name).read_bytes())
    os.symlink(outside / "train", root / "train")
    with pytest.raises(DatasetError, match="outside the dataset root"):
        NavilaSource(root).episodes("train")


def test_id_mismatches_between_files_reach_the_summary(tmp_path, good):
    poses = json.loads((good / "poses_train.json").read_text())
    recs = _records(good)
    poses["orphan-1"] = [[0, 0, 0]]
    del poses[recs[0]["video_id"]]
    (good / "poses_train.json").write_text(json.dumps(poses))
    s = extract(_project(tmp_path, {"nav": good}), ExtractOptions("train"))
    rep = s.sources["nav/train"]
    assert rep["n_poses_without_annotation"] == 1 and rep["poses_without_annotation"] == ["orphan-1"]
    assert rep["n_annotations_without_poses"] == 1 and rep["annotations_without_poses"] == [recs[0]["video_id"]]
    assert s.to_dict()["sources"]["nav/train"] == rep


def test_rover_row_with_invalid_utf8_is_quarantined_not_the_table(tmp_path, good):
    rover = tmp_path / "rover"
    rover.mkdir()
    vw = cv2.VideoWriter(str(rover / "c.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (32, 32))
    for i in range(10):
        vw.write(np.full((32, 32, 3), i * 20, np.uint8))
    vw.release()
    clip_ids = pa.array([b"\xff\xfe", b"ok-1", b"ok-2"], pa.binary()).cast(pa.string(), safe=False)
    videos = pa.array([b"a.mp4", b"b\xed\xa0\x80.mp4", b"c.mp4"], pa.binary()).cast(pa.string(), safe=False)  # an encoded surrogate
    table = pa.table({"clip_id": clip_ids, "video": videos, "fps": [10.0] * 3, "telemetry": [[0.0] * 8] * 3,
                      "risk": ["low"] * 3, "reason": ["human"] * 3, "action": ["stop"] * 3})
    pq.write_table(table, rover / "train.parquet")
    ds = {"rover": {"source": "rover", "root": str(rover), "splits": ["train"], "stages": ["rover-meta"]},
          "good": {"source": "navila", "root": str(good), "splits": ["train"], "stages": ["poses"]}}
    s = extract(config_from_dict({"cache_root": str(tmp_path / "cache"), "datasets": ds}, tmp_path), ExtractOptions("train"))
    assert not s.errors, s.errors
    (meta,) = [st for st in s.stages if st.dataset == "rover"]
    reasons = {q["episode_id"]: q["reason"] for q in meta.quarantined}
    assert "'clip_id': not UTF-8 text (byte 0" in reasons["<row #0>"], reasons
    assert "'video': not UTF-8 text (byte 1" in reasons["ok-1"], reasons
    assert meta.finalized and set(reasons) == {"<row #0>", "ok-1"} and meta.episodes_ok == 1  # ok-2 is built
    assert _poses_stage(s, "good").episodes_ok == 4


@pytest.mark.parametrize("suffix, fourcc", [(".avi", "MJPG"), (".mkv", "mp4v")])
def test_truncated_avi_or_mkv_is_quarantined_without_an_annotated_count(tmp_path, suffix, fourcc):
    path = tmp_path / f"clip{suffix}"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(40):
        w.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    w.release()
    pixels, n = read_video(path, [0, 39])
    assert n == 40 and pixels.shape == (2, 48, 64, 3)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # no box table in these containers to reveal the cut
    # the avi's index still lists 40 frames; its cut last packet is flagged by the demuxer
    with pytest.raises(Quarantine, match=r"container states 40 frames, decoder finds \d+|flags the packet at byte \d+ as damaged"):
        read_video(path, [0])
