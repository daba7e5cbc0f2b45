"""Bad input end to end: every kind of damage is quarantined with a reason that names it, the run
completes, the other episodes are built, and the quarantine shows in the cache index and the summary.

Small real datasets are written into tmp_path (NaVILA via ``make_navila`` then damaged; rover mp4s and
parquet written here) and run through ``extract`` exactly as ``navcache extract`` does.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from navcache.cache_specs import open_cache
from navcache.cache_specs.labels import ACTION, REASON, RISK, TELEMETRY_FIELDS
from navcache.cache_specs.manifest import IncompleteCache
from navcache.pipeline.config import load_config
from navcache.pipeline.runner import ExtractOptions, extract
from navcache.pipeline.sampling import uniform_indices
from tests.helpers import cache_checksums, make_navila, run_cli, write_project

NUM_FRAMES = 8  # navila and rover default


def write_config(dirpath: Path, datasets: dict, model: Path, cache_root: str = "cache") -> Path:
    cfg = {
        "cache_root": cache_root,
        "datasets": datasets,
        "stages": {"frame-features": {"encoder": {"model": str(model)}, "batch_size": 16}},
    }
    path = dirpath / "navcache.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def stage(summary, name: str, dataset: str | None = None):
    (s,) = [s for s in summary.stages if s.stage == name and (dataset is None or s.dataset == dataset)]
    return s


def quarantine_map(cache) -> dict[str, str]:
    return dict(cache.quarantined.iter_rows())


# ------------------------------------------------------------------------------------ NaVILA

# make_navila(n_episodes=6): episode e has 10 + e % 5 frames and two records, "ep00e-4" (frames 0..4)
# and "ep00e-<n-1>" (all frames). The latest frame is always sampled, so damaging frame n-1 hits
# only the long record.
GOOD_NAVILA = ["ep000-4", "ep001-4", "ep002-4", "ep003-4", "ep004-4", "ep005-4"]

# kind -> (episode id, stages that quarantine it, fragments its reason must contain)
NAVILA_BAD = {
    "missing_jpeg": ("ep000-9", {"frame-features"}, ["missing image file", "ep000/frame_009.jpg"]),
    "corrupt_jpeg": ("ep001-10", {"frame-features"}, ["cannot decode image", "ep001/frame_010.jpg"]),
    "truncated_jpeg": ("ep002-11", {"frame-features"}, ["truncated JPEG", "ep002/frame_011.jpg"]),
    # pose problems quarantine only the poses stage: the frames are fine
    "nan_pose": ("ep003-12", {"poses"}, ["not finite", "poses_train.json", "ep003-12"]),
    "no_pose_entry": ("ep004-13", {"poses"}, ["no poses for video_id 'ep004-13'", "poses_train.json"]),
    "frames_not_a_list": ("ep005-9", {"poses", "frame-features"}, ["'frames' must be a non-empty list", "annotations_train.json record #11"]),
    "path_escape": ("escape", {"poses", "frame-features"}, ["unsafe path", "'../../etc/passwd'", "outside the dataset root"]),
    "duplicate_video_id": ("<record #13>", {"poses", "frame-features"}, ["duplicate video_id 'ep000-4'", "first used by record #0"]),
}


def damage_navila(data: Path) -> Path:
    img = data / "train"
    (img / "ep000/frame_009.jpg").unlink()
    (img / "ep001/frame_010.jpg").write_bytes(np.random.default_rng(7).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    raw = (img / "ep002/frame_011.jpg").read_bytes()
    (img / "ep002/frame_011.jpg").write_bytes(raw[: len(raw) // 2])

    recs = json.loads((data / "annotations_train.json").read_text())
    poses = json.loads((data / "poses_train.json").read_text())
    poses["ep003-12"][12] = [math.nan, 0.0, 0.0]  # json writes NaN, which json.loads accepts
    del poses["ep004-13"]
    (rec,) = [r for r in recs if r["video_id"] == "ep005-9"]
    rec["frames"] = "ep005/frame_000.jpg"  # a string, not a list
    recs.append({"video_id": "escape", "frames": ["../../etc/passwd"], "q": "walk", "a": "stop"})  # record #12
    poses["escape"] = [[0.0, 0.0, 0.0]]
    recs.append(dict(recs[0]))  # record #13 duplicates ep000-4
    (data / "annotations_train.json").write_text(json.dumps(recs))
    (data / "poses_train.json").write_text(json.dumps(poses))
    return data


@pytest.fixture(scope="module")
def navila_run(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("bad_navila")
    data = damage_navila(make_navila(tmp / "data", n_episodes=6))
    cfg = write_project(tmp, data, tiny_model, part_size=4)  # 14 episodes -> 4 parts
    summary = extract(load_config(cfg), ExtractOptions("train"))
    return tmp, summary


def test_navila_run_completes_and_builds_the_rest(navila_run):
    tmp, s = navila_run
    assert s.errors == []
    assert [(x.stage, x.parts_total, x.parts_built, x.finalized) for x in s.stages] == [("poses", 4, 4, True), ("frame-features", 4, 4, True)]

    ff = open_cache(tmp / "cache/nav/train/frame_features")
    # the two records with pose problems have fine frames: only the poses stage sets them aside
    assert ff.episodes == sorted(GOOD_NAVILA + ["ep003-12", "ep004-13"])
    for ep in GOOD_NAVILA:  # 5 real frames, front-padded to 8
        a = ff[ep]
        assert a["cls"].shape[0] == NUM_FRAMES and np.isfinite(a["cls"].astype(np.float32)).all()
        assert a["frame_index"].tolist() == [-1, -1, -1, 0, 1, 2, 3, 4]
    # the poses stage never opens the images: JPEG damage does not touch it
    poses = open_cache(tmp / "cache/nav/train/poses")
    assert poses.episodes == sorted(GOOD_NAVILA + ["ep000-9", "ep001-10", "ep002-11"])
    assert poses["ep000-9"]["poses"][-1].tolist() == pytest.approx([0.25 * 9, 0.0, 0.05 * 9])


@pytest.mark.parametrize("kind", list(NAVILA_BAD))
def test_navila_bad_input_is_quarantined_with_its_reason(navila_run, kind):
    tmp, s = navila_run
    eid, quarantined_in, fragments = NAVILA_BAD[kind]
    for name, folder in (("poses", "poses"), ("frame-features", "frame_features")):
        c = open_cache(tmp / "cache/nav/train" / folder)
        in_index = quarantine_map(c)
        in_summary = {q["episode_id"]: q["reason"] for q in stage(s, name).quarantined}
        if name in quarantined_in:
            assert eid not in c.episodes
            for fragment in fragments:
                assert fragment in in_index[eid], (name, in_index[eid])
            assert in_summary[eid] == in_index[eid]
        else:
            assert eid in c.episodes and eid not in in_index and eid not in in_summary


def test_navila_summary_matches_the_index(navila_run):
    tmp, s = navila_run
    total = 0
    for name, folder in (("poses", "poses"), ("frame-features", "frame_features")):
        c = open_cache(tmp / "cache/nav/train" / folder)
        st = stage(s, name)
        assert {q["episode_id"]: q["reason"] for q in st.quarantined} == quarantine_map(c)
        assert st.episodes_ok == len(c) and st.episodes_quarantined == len(c.quarantined)
        assert c.manifest["counts"]["quarantined"] == st.episodes_quarantined
        total += st.episodes_quarantined
    assert s.quarantined == total == 5 + 6  # poses: 3 record-level + 2 pose problems; frame-features: 3 record-level + 3 image problems
    expected_ff = {eid for eid, stages, _ in NAVILA_BAD.values() if "frame-features" in stages}
    assert set(quarantine_map(open_cache(tmp / "cache/nav/train/frame_features"))) == expected_ff


def test_nan_pose_does_not_quarantine_frame_features(navila_run):
    tmp, _ = navila_run
    assert "ep003-12" in open_cache(tmp / "cache/nav/train/frame_features").episodes


def assert_only_new_part_holds(before: dict, after: dict, episodes: list[str]) -> None:
    """One part was added, holding exactly ``episodes`` (index rows point there); earlier parts
    are byte for byte what they were (their rows of ``episodes`` are dead now)."""
    new = sorted(set(after) - set(before))
    assert len(new) == 1 and new[0].startswith("part-")
    assert [row[0] for row in after["index"] if row[1] == new[0]] == episodes
    assert {k: v for k, v in before.items() if k.startswith("part-")} == {k: after[k] for k in before if k.startswith("part-")}


def test_navila_fixing_one_file_rebuilds_only_its_part(tmp_path, tiny_model):
    data = damage_navila(make_navila(tmp_path / "data", n_episodes=6))
    cfg = write_project(tmp_path, data, tiny_model, part_size=4)
    extract(load_config(cfg), ExtractOptions("train"))
    ff_dir = tmp_path / "cache/nav/train/frame_features"
    before = cache_checksums(ff_dir)
    # part-00000 holds <record #13>, ep000-4, ep000-9, ep001-10: restore ep000-9's missing frame
    img = np.full((48, 48, 3), 90, np.uint8)
    assert cv2.imwrite(str(data / "train/ep000/frame_009.jpg"), img)
    s = extract(load_config(cfg), ExtractOptions("train"))
    assert s.errors == []
    assert {x.stage: x.parts_built for x in s.stages} == {"poses": 0, "frame-features": 1}
    after = cache_checksums(ff_dir)
    # parts stay put: ep000-9 alone is encoded into a new part, every earlier part is untouched
    assert_only_new_part_holds(before, after, ["ep000-9"])
    c = open_cache(ff_dir)
    assert "ep000-9" in c.episodes and "ep000-9" not in quarantine_map(c)
    assert len(c.quarantined) == 5 and stage(s, "frame-features").episodes_quarantined == 5


def test_malformed_annotations_fail_that_dataset_only(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps (and splits long paths) at the terminal width
    bad = tmp_path / "bad"
    make_navila(bad, n_episodes=2)
    (bad / "annotations_train.json").write_text('[{"video_id": "ep000-4", "frames": [')  # cut short
    good = make_navila(tmp_path / "good", n_episodes=2)
    nav = {"source": "navila", "splits": ["train"], "stages": ["poses", "frame-features"], "part_size": 4}
    cfg = write_config(tmp_path, {"bad": {**nav, "root": str(bad)}, "good": {**nav, "root": str(good)}}, tiny_model)

    s = extract(load_config(cfg), ExtractOptions("train"))
    assert len(s.errors) == 1
    assert "bad" in s.errors[0] and "annotations_train.json" in s.errors[0] and "invalid JSON" in s.errors[0]
    assert {(x.dataset, x.stage) for x in s.stages} == {("good", "poses"), ("good", "frame-features")}
    assert len(open_cache(tmp_path / "cache/good/train/frame_features")) == 4
    assert len(open_cache(tmp_path / "cache/good/train/poses")) == 4
    assert not list((tmp_path / "cache").glob("bad/**/manifest.json"))

    p = run_cli("extract", "-c", str(cfg), cwd=tmp_path, check=False)
    assert p.returncode == 1, p.stderr
    assert "annotations_train.json" in " ".join((p.stdout + p.stderr).split())


def test_failed_stage_leaves_no_complete_looking_cache(tmp_path, tiny_model):
    """A build that fails after the cache changed must not leave a manifest (open_cache refuses it)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    data = make_navila(tmp_path / "data", n_episodes=2)
    cfg = write_project(tmp_path, data, model, part_size=2)
    assert extract(load_config(cfg), ExtractOptions("train")).errors == []
    ff_dir = tmp_path / "cache/nav/train/frame_features"
    assert (ff_dir / "manifest.json").exists()

    for w in model.glob("*.safetensors"):  # new weights fingerprint -> parts stale -> reload fails
        w.write_bytes(b"\x00garbage, not a safetensors file" * 8)
    s = extract(load_config(cfg), ExtractOptions("train"))
    assert len(s.errors) == 1 and "frame-features" in s.errors[0]
    assert not (ff_dir / "manifest.json").exists()
    with pytest.raises(IncompleteCache):
        open_cache(ff_dir)
    assert len(open_cache(tmp_path / "cache/nav/train/poses")) == 4  # the other stage is unaffected


# ------------------------------------------------------------------------------------- rover

ROVER_FRAMES = 16
GOOD_TELEMETRY = [0.1, 0.0, 9.8, 0.0, 0.0, 0.1, 0.5, 0.0]
ROVER_TYPES = {
    "clip_id": pa.string(), "video": pa.string(), "fps": pa.float64(), "n_frames": pa.int64(),
    "telemetry": pa.list_(pa.float64()), "risk": pa.string(), "reason": pa.string(),
    "action": pa.string(), "weight": pa.float64(),
}
# clip id -> fragments its reason must contain
ROVER_BAD = {
    "trunc": ["truncated video", "trunc.mp4"],
    "empty": ["empty video file (0 bytes)", "empty.mp4"],
    "text": ["cannot open video", "text.mp4"],
    "short": ["decoder finds 16 frames, annotation says 20", "short.mp4"],
    "nantele": ["'telemetry' must be 8 finite numbers", "nan"],
    "badrisk": ["unknown risk label 'extreme'"],
    "oddlabel": ["unknown action label '[/stop]'"],  # rich markup in data must print as text
}
GOOD_ROVER = ["good1", "good2"]


def write_mp4(path: Path, n: int = ROVER_FRAMES, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (48, 48))
    assert vw.isOpened()
    rng = np.random.default_rng(seed)
    for i in range(n):
        frame = np.full((48, 48, 3), (i * 15) % 255, np.uint8)
        frame[:16] = rng.integers(0, 255, (16, 48, 3), dtype=np.uint8)
        vw.write(frame)
    vw.release()
    return path


def make_rover(root: Path) -> Path:
    clips = root / "clips"
    for k, c in enumerate(["good1", "good2", "trunc", "short", "nantele", "badrisk", "oddlabel"]):
        write_mp4(clips / f"{c}.mp4", seed=k)
    raw = (clips / "trunc.mp4").read_bytes()
    (clips / "trunc.mp4").write_bytes(raw[: int(len(raw) * 0.6)])
    (clips / "empty.mp4").write_bytes(b"")
    (clips / "text.mp4").write_text("this is not a video\n" * 40)

    def row(clip: str, **kw) -> dict:
        r = {"clip_id": clip, "video": f"clips/{clip}.mp4", "fps": 10.0, "n_frames": ROVER_FRAMES,
             "telemetry": list(GOOD_TELEMETRY), "risk": RISK[1], "reason": REASON[0], "action": ACTION[1], "weight": 1.0}
        return {**r, **kw}

    rows = [
        row("good1"), row("good2", risk=RISK[3], reason=REASON[1], action=ACTION[2]),
        row("trunc"), row("empty"), row("text"),
        row("short", n_frames=20),
        row("nantele", telemetry=GOOD_TELEMETRY[:3] + [math.nan] + GOOD_TELEMETRY[4:]),
        row("badrisk", risk="extreme"),
        row("oddlabel", action="[/stop]"),
    ]
    assert len(GOOD_TELEMETRY) == len(TELEMETRY_FIELDS)
    table = pa.table({k: pa.array([r[k] for r in rows], type=t) for k, t in ROVER_TYPES.items()})
    pq.write_table(table, root / "train.parquet")
    return root


ROVER_DS = {"source": "rover", "splits": ["train"], "stages": ["frame-features"], "part_size": 3}


@pytest.fixture(scope="module")
def rover_data(tmp_path_factory) -> Path:
    return make_rover(tmp_path_factory.mktemp("rover_data") / "rover")


@pytest.fixture(scope="module")
def rover_run(tmp_path_factory, rover_data, tiny_model):
    tmp = tmp_path_factory.mktemp("bad_rover")
    broken = tmp / "broken"
    broken.mkdir()
    (broken / "train.parquet").write_bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    cfg = write_config(tmp, {"rover": {**ROVER_DS, "root": str(rover_data)}, "broken": {**ROVER_DS, "root": str(broken)}}, tiny_model)
    return tmp, extract(load_config(cfg), ExtractOptions("train"))


def test_rover_run_completes_and_builds_the_good_clips(rover_run):
    tmp, s = rover_run
    st = stage(s, "frame-features", "rover")
    assert st.finalized and st.parts_built == st.parts_total == 3
    c = open_cache(tmp / "cache/rover/train/frame_features")
    assert c.episodes == GOOD_ROVER  # 48x48 clips decode (decord pads their rows; see pipeline/decode.py)
    for clip in GOOD_ROVER:
        a = c[clip]
        assert a["cls"].shape[0] == NUM_FRAMES and np.isfinite(a["cls"].astype(np.float32)).all()
        assert a["frame_index"].tolist() == uniform_indices(ROVER_FRAMES, NUM_FRAMES).tolist()
    assert not np.array_equal(c["good1"]["cls"], c["good2"]["cls"])


@pytest.mark.parametrize("clip", list(ROVER_BAD))
def test_rover_bad_input_is_quarantined_with_its_reason(rover_run, clip):
    tmp, s = rover_run
    c = open_cache(tmp / "cache/rover/train/frame_features")
    in_index = quarantine_map(c)
    assert clip not in c.episodes
    for fragment in ROVER_BAD[clip]:
        assert fragment in in_index[clip], in_index[clip]
    in_summary = {q["episode_id"]: q["reason"] for q in stage(s, "frame-features", "rover").quarantined}
    assert in_summary[clip] == in_index[clip]


def test_rover_summary_matches_the_index(rover_run):
    tmp, s = rover_run
    c = open_cache(tmp / "cache/rover/train/frame_features")
    st = stage(s, "frame-features", "rover")
    assert set(quarantine_map(c)) == set(ROVER_BAD)
    assert {q["episode_id"]: q["reason"] for q in st.quarantined} == quarantine_map(c)
    assert (st.episodes_ok, st.episodes_quarantined, s.quarantined) == (2, len(ROVER_BAD), len(ROVER_BAD))


def test_malformed_parquet_is_a_dataset_error(rover_run):
    tmp, s = rover_run
    assert len(s.errors) == 1
    assert "broken" in s.errors[0] and "train.parquet" in s.errors[0] and "not a readable parquet table" in s.errors[0]
    assert [x.dataset for x in s.stages] == ["rover"]
    assert not list((tmp / "cache").glob("broken/**/manifest.json"))


def test_rover_fixing_one_video_rebuilds_only_its_part(tmp_path, rover_data, tiny_model):
    data = tmp_path / "rover"
    shutil.copytree(rover_data, data)
    cfg = write_config(tmp_path, {"rover": {**ROVER_DS, "root": str(data)}}, tiny_model)
    extract(load_config(cfg), ExtractOptions("train"))
    ff_dir = tmp_path / "cache/rover/train/frame_features"
    before = cache_checksums(ff_dir)
    # sorted ids in parts of 3: [badrisk empty good1] [good2 nantele oddlabel] [short text trunc]
    write_mp4(data / "clips/trunc.mp4", seed=2)
    s = extract(load_config(cfg), ExtractOptions("train"))
    assert s.errors == [] and stage(s, "frame-features").parts_built == 1
    after = cache_checksums(ff_dir)
    assert_only_new_part_holds(before, after, ["trunc"])
    c = open_cache(ff_dir)
    assert c.episodes == ["good1", "good2", "trunc"] and "trunc" not in quarantine_map(c)


def test_strict_exit_code_via_cli(tmp_path, rover_data, tiny_model, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps (and splits long paths) at the terminal width
    cfg = write_config(tmp_path, {"rover": {**ROVER_DS, "root": str(rover_data)}}, tiny_model)
    strict = run_cli("extract", "-c", str(cfg), "--strict", cwd=tmp_path, check=False)
    assert strict.returncode == 3, strict.stderr
    plain = run_cli("extract", "-c", str(cfg), cwd=tmp_path, check=False)
    assert plain.returncode == 0, plain.stderr
    # the terminal summary shows each reason verbatim (data is not rich markup)
    out = " ".join((plain.stdout + plain.stderr).split())
    for fragments in ROVER_BAD.values():
        for fragment in fragments:
            assert fragment in out, fragment
    assert "[ax, ay, az, gx, gy, gz, v, w]" in out
