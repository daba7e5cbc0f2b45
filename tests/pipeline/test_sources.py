"""NaVILA and rover sources and the source registry, on small datasets written into tmp_path."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from navcache.cache_specs.labels import ACTION, REASON, RISK
from navcache.pipeline.errors import ConfigError, DatasetError, Quarantine
from navcache.pipeline.sources import SOURCES, make_source
from navcache.pipeline.sources.base import Episode, Frames
from navcache.pipeline.sources.navila import NavilaSource
from navcache.pipeline.sources.rover import RoverSource
from tests import helpers

W, H = 32, 24


def colour(i: int) -> tuple[int, int, int]:
    """Distinct solid RGB colour of frame i; R, G and B differ so a BGR/RGB swap shows."""
    return (220 - 3 * i, 30 + 3 * i, 120)


def write_jpeg(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (W, H)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((size[1], size[0], 3), rgb[::-1], np.uint8))


def write_video(path: Path, n: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (W, H))
    assert vw.isOpened()
    for i in range(n):
        vw.write(np.full((H, W, 3), colour(i)[::-1], np.uint8))
    vw.release()
    return path


def assert_colours(pixels: np.ndarray, frame_numbers, tol: float = 8.0) -> None:
    helpers.assert_colours(pixels, frame_numbers, colour, tol)


def by_id(episodes: list[Episode]) -> dict[str, Episode]:
    ids = [ep.episode_id for ep in episodes]
    assert ids == sorted(ids), "episodes must be sorted by episode_id"
    assert len(set(ids)) == len(ids), "episode ids must be unique"
    return {ep.episode_id: ep for ep in episodes}


# ------------------------------------------------------------------------------------ NaVILA


def navila_episode(root: Path, vid: str, n: int, split: str = "train") -> dict:
    """Write n frames of episode ``vid`` and return its annotation record."""
    frames = [f"{vid}/frame_{j:03d}.jpg" for j in range(n)]
    for j, rel in enumerate(frames):
        write_jpeg(root / split / rel, colour(j))
    return {"video_id": vid, "frames": frames, "q": f"walk to the {vid}", "a": "move forward 75 cm"}


def write_navila(root: Path, records: list, poses: dict | None = None, split: str = "train") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"annotations_{split}.json").write_text(json.dumps(records))
    if poses is not None:
        (root / f"poses_{split}.json").write_text(json.dumps(poses))


def straight_poses(n: int) -> list[list[float]]:
    return [[0.25 * j, 0.0, 0.0] for j in range(n)]



def assert_quarantines(eps: dict, expected: dict, filename: str) -> None:
    """Each id in ``expected`` is quarantined with a reason naming ``fragment`` and the file (None = ok).

    Every record, quarantined or not, stays JSON-serialisable: it goes into the cache index.
    """
    assert set(eps) == set(expected)
    for eid, fragment in expected.items():
        q = eps[eid].quarantine
        if fragment is None:
            assert q is None, q
        else:
            assert q is not None and fragment in q and filename in q, (eid, q)
        json.dumps(eps[eid].record, allow_nan=False)

def test_navila_good_data_round_trips(tmp_path):
    recs = [navila_episode(tmp_path, "ep_b", 20), navila_episode(tmp_path, "ep_a", 3)]
    write_navila(tmp_path, recs, {"ep_b": straight_poses(20), "ep_a": straight_poses(3)})
    src = NavilaSource(tmp_path)
    eps = by_id(src.episodes("train"))
    assert list(eps) == ["ep_a", "ep_b"] and all(ep.quarantine is None for ep in eps.values())

    long = eps["ep_b"]
    expected_idx = [0, 2, 5, 8, 10, 13, 16, 19]  # linspace(0, 19, 7, endpoint=False) + [19]
    assert long.record["sample_indices"] == expected_idx and long.record["n_pad"] == 0
    assert long.record["n_frames"] == 20 and long.record["q"] == "walk to the ep_b"
    assert long.record["frames"] == recs[0]["frames"]
    assert long.record["poses"] == straight_poses(20)
    # Only the sampled frames are listed (and later fingerprinted / read).
    assert long.files == tuple(str((tmp_path / "train" / recs[0]["frames"][k]).resolve()) for k in expected_idx)
    json.dumps(long.record)

    frames = src.read_frames(long)
    assert isinstance(frames, Frames)
    assert frames.pixels.shape == (8, H, W, 3) and frames.pixels.dtype == np.uint8
    assert frames.indices.tolist() == expected_idx and not frames.padded.any()
    assert_colours(frames.pixels, expected_idx, tol=4)


def test_navila_short_history_is_front_padded_with_black(tmp_path):
    write_navila(tmp_path, [navila_episode(tmp_path, "short", 3)])
    src = NavilaSource(tmp_path)
    (ep,) = src.episodes("train")
    assert ep.record["sample_indices"] == [-1] * 5 + [0, 1, 2] and ep.record["n_pad"] == 5
    assert ep.record["poses"] is None  # no pose file: not an error
    assert len(ep.files) == 3
    frames = src.read_frames(ep)
    assert frames.pixels.shape == (8, H, W, 3)
    assert frames.padded.tolist() == [True] * 5 + [False] * 3
    assert frames.indices.tolist() == [-1] * 5 + [0, 1, 2]
    assert not frames.pixels[:5].any()
    assert_colours(frames.pixels[5:], [0, 1, 2], tol=4)


def test_navila_num_frames_option_and_index_override(tmp_path):
    write_navila(tmp_path, [navila_episode(tmp_path, "e", 10)])
    src = NavilaSource(tmp_path, num_frames=4)
    (ep,) = src.episodes("train")
    assert ep.record["sample_indices"] == [0, 3, 6, 9]
    frames = src.read_frames(ep, indices=[-1, 7, 1])
    assert frames.indices.tolist() == [-1, 7, 1] and frames.padded.tolist() == [True, False, False]
    assert not frames.pixels[0].any()
    assert_colours(frames.pixels[1:], [7, 1], tol=4)
    with pytest.raises(Quarantine, match="out of range"):
        src.read_frames(ep, indices=[10])


def test_navila_reads_only_sampled_frames(tmp_path):
    rec = navila_episode(tmp_path, "long", 49)
    write_navila(tmp_path, [rec])
    # Frame 1 is not among [0, 6, 13, 20, 27, 34, 41, 48]; damaging it must not matter.
    (tmp_path / "train" / rec["frames"][1]).write_bytes(b"garbage")
    (tmp_path / "train" / rec["frames"][2]).unlink()
    src = NavilaSource(tmp_path)
    (ep,) = src.episodes("train")
    frames = src.read_frames(ep)
    assert frames.indices.tolist() == [0, 6, 13, 20, 27, 34, 41, 48]
    assert_colours(frames.pixels, [0, 6, 13, 20, 27, 34, 41, 48], tol=4)


def test_navila_custom_layout_templates(tmp_path):
    recs = [navila_episode(tmp_path / "imgs", "e", 2, split="val")]
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "val.json").write_text(json.dumps(recs))
    src = make_source("navila", tmp_path, annotations="ann/{split}.json", images="imgs/{split}", poses="none_{split}.json")
    (ep,) = src.episodes("val")
    assert ep.quarantine is None
    assert ep.files[0] == str((tmp_path / "imgs" / "val" / "e" / "frame_000.jpg").resolve())
    assert src.read_frames(ep).pixels.shape == (8, H, W, 3)


@pytest.mark.parametrize(
    "text, where",
    [('[{"video_id": "a",}]', "line 1 column"), ('[\n{"video_id": "a"}\n', "line 3 column"), ("", "line 1 column 1")],
)
def test_navila_malformed_json_is_a_dataset_error(tmp_path, text, where):
    (tmp_path / "annotations_train.json").write_text(text)
    with pytest.raises(DatasetError) as err:
        NavilaSource(tmp_path).episodes("train")
    assert "annotations_train.json" in str(err.value) and where in str(err.value)


def test_navila_dataset_level_errors(tmp_path):
    src = NavilaSource(tmp_path)
    with pytest.raises(DatasetError, match="not found.*annotations_train.json"):
        src.episodes("train")
    (tmp_path / "annotations_train.json").write_text('{"video_id": "a"}')
    with pytest.raises(DatasetError, match="annotations_train.json.*JSON list"):
        src.episodes("train")
    (tmp_path / "annotations_train.json").write_bytes(b'["\xff\xfe"]')
    with pytest.raises(DatasetError, match="annotations_train.json.*UTF-8"):
        src.episodes("train")
    (tmp_path / "annotations_train.json").write_text("[]")
    (tmp_path / "poses_train.json").write_text("{oops")
    with pytest.raises(DatasetError, match="poses_train.json.*line 1 column 2"):
        src.episodes("train")
    (tmp_path / "poses_train.json").write_text("[]")
    with pytest.raises(DatasetError, match="poses_train.json.*JSON object"):
        src.episodes("train")


def test_navila_bad_records_are_quarantined(tmp_path):
    outside = tmp_path / "outside"
    write_jpeg(outside / "x.jpg", colour(0))
    root = tmp_path / "data"
    good = navila_episode(root, "good", 4)
    linked = navila_episode(root, "linked", 1)
    os.symlink(outside / "x.jpg", root / "train" / "linked" / "escape.jpg")
    linked["frames"] = ["linked/escape.jpg"]
    records = [
        good,
        {"frames": ["good/frame_000.jpg"], "q": "", "a": ""},  # no video_id
        {"video_id": 7, "frames": ["good/frame_000.jpg"], "q": "", "a": ""},
        {"video_id": "", "frames": ["good/frame_000.jpg"], "q": "", "a": ""},
        "not an object",
        {"video_id": "noframes", "frames": [], "q": "", "a": ""},
        {"video_id": "strframes", "frames": "good/frame_000.jpg", "q": "", "a": ""},
        {"video_id": "intframe", "frames": ["good/frame_000.jpg", 3], "q": "", "a": ""},
        {"video_id": "noq", "frames": ["good/frame_000.jpg"], "a": ""},
        {"video_id": "inta", "frames": ["good/frame_000.jpg"], "q": "", "a": 5},
        {"video_id": "dotdot", "frames": ["../x.jpg"], "q": "", "a": ""},
        {"video_id": "abs", "frames": ["/etc/passwd"], "q": "", "a": ""},
        {"video_id": "url", "frames": ["http://x/y.jpg"], "q": "", "a": ""},
        linked,
        dict(good),  # duplicate of record #0
    ]
    write_navila(root, records)
    eps = by_id(NavilaSource(root).episodes("train"))
    expected = {
        "good": None,
        "<record #1>": "'video_id'",
        "<record #2>": "'video_id'",
        "<record #3>": "'video_id'",
        "<record #4>": "expected an object",
        "noframes": "'frames'",
        "strframes": "'frames'",
        "intframe": "'frames'[1]",
        "noq": "'q'",
        "inta": "'a'",
        "dotdot": "'../x.jpg'",
        "abs": "'/etc/passwd'",
        "url": "'http://x/y.jpg'",
        "linked": "outside the dataset root",
        "<record #14>": "duplicate video_id 'good' (first used by record #0)",
    }
    assert_quarantines(eps, expected, "annotations_train.json")
    for eid, fragment in expected.items():
        if fragment is not None:
            assert eps[eid].files == ()
    with pytest.raises(Quarantine, match="duplicate"):
        NavilaSource(root).read_frames(eps["<record #14>"])


def test_navila_pose_checks_and_report(tmp_path):
    recs = [navila_episode(tmp_path, v, 3) for v in ("ok", "nopose", "nan", "inf", "count", "shape", "notlist")]
    poses = {
        "ok": straight_poses(3),
        "nan": [[0, 0, 0], [math.nan, 0, 0], [0, 0, 0]],
        "inf": [[0, 0, 0], [0, 0, math.inf], [0, 0, 0]],
        "count": straight_poses(2),
        "shape": [[0, 0], [0, 0, 0], [0, 0, 0]],
        "notlist": {"x": 1},
        "orphan": straight_poses(5),
    }
    write_navila(tmp_path, recs, poses)  # json.dumps writes NaN / Infinity, which json.loads accepts
    src = NavilaSource(tmp_path)
    eps = by_id(src.episodes("train"))
    assert eps["ok"].quarantine is None and eps["ok"].record["poses"] == straight_poses(3)
    expected = {
        "nopose": "no poses for video_id 'nopose'",
        "nan": "not finite",
        "inf": "not finite",
        "count": "2 poses for 3 frames",
        "shape": "pose #0",
        "notlist": "must be a list",
    }
    for eid, fragment in expected.items():
        # frames are fine: the episode is not quarantined; the poses stage quarantines on pose_error
        assert eps[eid].quarantine is None
        q = eps[eid].record["pose_error"]
        assert q is not None and fragment in q, (eid, q)
        assert eps[eid].record["poses"] is None
        if eid != "nopose":
            assert "poses_train.json" in q
    assert eps["ok"].record["pose_error"] is None
    assert src.report["poses_without_annotation"] == ["orphan"]
    assert src.report["annotations_without_poses"] == ["nopose"]
    assert src.report["records"] == 7 and src.report["quarantined"] == 0


def test_navila_unreadable_frames_quarantine_on_read(tmp_path):
    recs = [navila_episode(tmp_path, v, 2) for v in ("missing", "corrupt", "sizes")]
    write_navila(tmp_path, recs)
    img = tmp_path / "train"
    (img / "missing" / "frame_001.jpg").unlink()
    data = (img / "corrupt" / "frame_000.jpg").read_bytes()
    (img / "corrupt" / "frame_000.jpg").write_bytes(data[: len(data) // 2])
    write_jpeg(img / "sizes" / "frame_001.jpg", colour(1), size=(W + 8, H))
    src = NavilaSource(tmp_path)
    eps = by_id(src.episodes("train"))
    for eid, fragment, name in [
        ("missing", "missing image file", "missing/frame_001.jpg"),
        ("corrupt", "truncated JPEG", "corrupt/frame_000.jpg"),
        ("sizes", "frame size mismatch", "sizes/frame_001.jpg"),
    ]:
        with pytest.raises(Quarantine) as err:
            src.read_frames(eps[eid])
        assert fragment in err.value.reason and name in err.value.reason


def test_navila_rejects_bad_options(tmp_path):
    with pytest.raises(ConfigError, match=r"^navila.options: 'num_frames' must be an integer >= 2, got 1$"):
        NavilaSource(tmp_path, num_frames=1)
    with pytest.raises(ConfigError, match=r"^navila.options.num_frames: expected an integer, got '8'$"):
        NavilaSource(tmp_path, num_frames="8")
    with pytest.raises(ConfigError, match="'images'.*placeholder"):
        NavilaSource(tmp_path, images="{split}/{camera}")


# ------------------------------------------------------------------------------------- rover

GOOD_TELEMETRY = [0.1, 0.0, 9.8, 0.0, 0.0, 0.1, 0.5, 0.0]


def rover_row(clip: str, **overrides) -> dict:
    row = {
        "clip_id": clip, "video": f"clips/{clip}.mp4", "fps": 10.0, "n_frames": 20,
        "telemetry": list(GOOD_TELEMETRY), "risk": "low", "reason": "human", "action": "slow", "weight": 1.5,
    }
    row.update(overrides)
    return row


def write_table(path: Path, rows: list[dict], drop: tuple[str, ...] = ()) -> None:
    cols = {k: [r.get(k) for r in rows] for k in rows[0] if k not in drop}
    types = {
        "clip_id": pa.string(), "video": pa.string(), "fps": pa.float64(), "n_frames": pa.int64(),
        "telemetry": pa.list_(pa.float64()), "risk": pa.string(), "reason": pa.string(),
        "action": pa.string(), "weight": pa.float64(),
    }
    table = pa.table({k: pa.array(v, type=types[k]) for k, v in cols.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def test_rover_good_data_round_trips(tmp_path):
    write_video(tmp_path / "clips" / "c2.mp4", 20)
    write_video(tmp_path / "clips" / "c1.mp4", 20)
    write_table(tmp_path / "train.parquet", [rover_row("c2", risk="high", reason="obstacle", action="stop"), rover_row("c1")])
    src = RoverSource(tmp_path)
    eps = by_id(src.episodes("train"))
    assert list(eps) == ["c1", "c2"] and all(ep.quarantine is None for ep in eps.values())
    rec = eps["c2"].record
    assert rec == {
        "video": "clips/c2.mp4", "fps": 10.0, "n_frames": 20, "telemetry": GOOD_TELEMETRY,
        "risk": "high", "reason": "obstacle", "action": "stop",
        "risk_id": RISK.index("high"), "reason_id": REASON.index("obstacle"), "action_id": ACTION.index("stop"),
        "weight": 1.5,
    }
    json.dumps(rec)
    assert eps["c2"].files == ((tmp_path / "clips" / "c2.mp4").resolve(),)
    frames = src.read_frames(eps["c2"])
    expected = [0, 2, 5, 8, 10, 13, 16, 19]  # linspace(0, 19, 8).astype(int)
    assert frames.pixels.shape == (8, H, W, 3) and frames.indices.tolist() == expected
    assert not frames.padded.any()
    assert_colours(frames.pixels, expected)
    override = src.read_frames(eps["c1"], indices=[19, 3])
    assert override.indices.tolist() == [19, 3]
    assert_colours(override.pixels, [19, 3])


def test_rover_optional_columns_absent(tmp_path):
    write_video(tmp_path / "clips" / "c.mp4", 9)
    write_table(tmp_path / "train.parquet", [rover_row("c")], drop=("n_frames", "weight"))
    src = RoverSource(tmp_path, num_frames=3)
    (ep,) = src.episodes("train")
    assert ep.quarantine is None and ep.record["n_frames"] is None and ep.record["weight"] == 1.0
    assert src.read_frames(ep).indices.tolist() == [0, 4, 8]


def test_rover_bad_rows_are_quarantined(tmp_path):
    outside = tmp_path / "outside.mp4"
    write_video(outside, 20)
    root = tmp_path / "data"
    root.mkdir()
    os.symlink(outside, root / "escape.mp4")
    write_video(root / "clips" / "good.mp4", 20)  # listing checks the clip file of a row otherwise good
    rows = [
        rover_row("good"),
        rover_row(None),
        rover_row(""),
        rover_row("dotdot", video="../outside.mp4"),
        rover_row("abs", video="/etc/passwd"),
        rover_row("url", video="http://x/y.mp4"),
        rover_row("link", video="escape.mp4"),
        rover_row("nullvideo", video=None),
        rover_row("fps0", fps=0.0),
        rover_row("fpsneg", fps=-5.0),
        rover_row("fpsnan", fps=math.nan),
        rover_row("tel7", telemetry=GOOD_TELEMETRY[:7]),
        rover_row("telnan", telemetry=GOOD_TELEMETRY[:7] + [math.nan]),
        rover_row("telnull", telemetry=None),
        rover_row("risk", risk="extreme"),
        rover_row("reason", reason=None),
        rover_row("action", action="fly"),
        rover_row("wneg", weight=-1.0),
        rover_row("wnan", weight=math.nan),
        rover_row("nf0", n_frames=0),
        rover_row("good"),
    ]
    write_table(root / "train.parquet", rows)
    eps = by_id(RoverSource(root).episodes("train"))
    expected = {
        "good": None,
        "<row #1>": "'clip_id'",
        "<row #2>": "'clip_id'",
        "dotdot": "'../outside.mp4'",
        "abs": "'/etc/passwd'",
        "url": "'http://x/y.mp4'",
        "link": "outside the dataset root",
        "nullvideo": "'video'",
        "fps0": "'fps'",
        "fpsneg": "'fps'",
        "fpsnan": "'fps'",
        "tel7": "'telemetry' must be 8 finite numbers",
        "telnan": "'telemetry' must be 8 finite numbers",
        "telnull": "'telemetry'",
        "risk": "unknown risk label 'extreme'; valid: none, low, medium, high",
        "reason": "unknown reason label None; valid: " + ", ".join(REASON),
        "action": "unknown action label 'fly'; valid: " + ", ".join(ACTION),
        "wneg": "'weight'",
        "wnan": "'weight'",
        "nf0": "'n_frames'",
        "<row #20>": "duplicate clip_id 'good' (first used by row #0)",
    }
    assert_quarantines(eps, expected, "train.parquet")


def test_rover_video_problems_quarantine_on_read(tmp_path):
    write_video(tmp_path / "clips" / "short.mp4", 5)
    write_video(tmp_path / "clips" / "miscount.mp4", 20)
    data = write_video(tmp_path / "clips" / "cut.mp4", 20).read_bytes()
    (tmp_path / "clips" / "cut.mp4").write_bytes(data[: int(len(data) * 0.6)])
    (tmp_path / "clips" / "text.mp4").write_text("not a video")
    rows = [
        rover_row("short", n_frames=5),
        rover_row("miscount", n_frames=21),
        rover_row("cut"),
        rover_row("text"),
        rover_row("missing"),
    ]
    write_table(tmp_path / "train.parquet", rows)
    src = RoverSource(tmp_path)
    eps = by_id(src.episodes("train"))
    expected = {
        "short": "5 frames, fewer than num_frames=8",
        "miscount": "decoder finds 20 frames, annotation says 21",
        "cut": "truncated video",
        "text": "cannot open video",
        "missing": "missing video file",
    }
    found_at_listing = {"cut", "missing"}  # a file's own damage quarantines it for every stage
    for eid, fragment in expected.items():
        assert (eps[eid].quarantine is None) == (eid not in found_at_listing), eps[eid].quarantine
        with pytest.raises(Quarantine) as err:
            src.read_frames(eps[eid])
        assert fragment in err.value.reason and f"{eid}.mp4" in err.value.reason, err.value.reason


def test_rover_table_errors(tmp_path):
    src = RoverSource(tmp_path)
    with pytest.raises(DatasetError, match="not found.*train.parquet"):
        src.episodes("train")
    (tmp_path / "train.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    with pytest.raises(DatasetError, match="train.parquet.*not a readable parquet"):
        src.episodes("train")
    write_video(tmp_path / "clips" / "c.mp4", 20)
    write_table(tmp_path / "train.parquet", [rover_row("c")], drop=("telemetry", "risk"))
    with pytest.raises(DatasetError) as err:
        src.episodes("train")
    assert "train.parquet" in str(err.value) and "telemetry, risk" in str(err.value)


def test_rover_rejects_bad_options(tmp_path):
    with pytest.raises(ConfigError, match="num_frames"):
        RoverSource(tmp_path, num_frames=0)
    with pytest.raises(ConfigError, match="'table'"):
        RoverSource(tmp_path, table="{split}_{part}.parquet")


# ---------------------------------------------------------------------------------- registry


def test_make_source_builds_each_kind(tmp_path):
    assert set(SOURCES) == {"navila", "rover", "videos", "lerobot", "vamos"}
    nav = make_source("navila", tmp_path, num_frames=4)
    assert isinstance(nav, NavilaSource) and nav.kind == "navila" and nav.num_frames == 4
    rov = make_source("rover", str(tmp_path), table="{split}.pq")
    assert isinstance(rov, RoverSource) and rov.kind == "rover" and rov.root == tmp_path


def test_make_source_unknown_kind_and_options(tmp_path):
    with pytest.raises(ConfigError) as err:
        make_source("habitat", tmp_path)
    assert "'habitat'" in str(err.value) and "navila, rover" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_source("rover", tmp_path, num_frame=8, fps=3)
    assert "unknown field 'fps'" in str(err.value) and "valid: allow_outside_root, num_frames, table" in str(err.value)
    with pytest.raises(ConfigError, match="num_frames"):
        make_source("navila", tmp_path, num_frames=0)


def test_registry_imports_sources_lazily():
    code = (
        "import sys, navcache.pipeline.sources as s; "
        "assert 'navcache.pipeline.sources.navila' not in sys.modules; "
        "assert 'navcache.pipeline.sources.rover' not in sys.modules; "
        "assert 'decord' not in sys.modules; "
        "s.source_class('rover'); assert 'navcache.pipeline.sources.rover' in sys.modules; "
        "assert 'navcache.pipeline.sources.navila' not in sys.modules"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)
