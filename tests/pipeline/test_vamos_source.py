"""The ``vamos`` source: the demo's VAMOS shards, shards written by the real ``datasets`` library,
the axis-convention check, and bad input quarantined row by row."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from navcache.pipeline.demo import vamos_writer
from navcache.pipeline.errors import ConfigError, DatasetError, Quarantine
from navcache.pipeline.sources import make_source
from navcache.pipeline.sources.vamos import parse_camera, parse_goal, project

K = [[60.0, 0.0, 31.5], [0.0, 60.0, 23.5], [0.0, 0.0, 1.0]]
CAM = {"resolution": {"width": 64, "height": 48}, "K": K, "camera_height_m": 0.5}


def jpeg(seed: int, w: int = 64, h: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def sample(i: int, curve: float = 0.0) -> dict:
    """A row whose path bends left by ``curve`` rad per metre; trajectory_2d from an independent projection."""
    s = np.linspace(0.0, 3.0, 7)
    pts = np.stack([s, curve * s**2 / 2, np.zeros_like(s)], 1)  # x forward, y left, on the floor
    uv = [[-1, -1] if x <= 0 else [round(60 * -y / x + 31.5), round(60 * 0.5 / x + 23.5)] for x, y, _ in pts]
    return {"image": {"bytes": jpeg(i), "path": None}, "trajectory_3d": pts.tolist(), "trajectory_2d": uv,
            "camera_params": json.dumps(CAM), "lang_goal": f"Navigate to <point x={uv[-1][0]} y={uv[-1][1]}>goal</point>",
            "text": "Navigate to x=<loc0500>, y=<loc0500>", "horizon": len(pts)}


def write(path: Path, rows: list[dict], **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, **kw)
    return path


# -- the demo's shards ------------------------------------------------------------------------------


def test_demo_shards_are_vamos_format(demo_world):
    root = demo_world / "vamos"
    names = sorted(p.name for p in (root / "data").iterdir())
    assert names == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet", "validation-00000-of-00001.parquet"]
    table = pq.read_table(root / "data" / names[0])
    row = table.slice(0, 1).to_pylist()[0]
    assert cv2.imdecode(np.frombuffer(row["image"]["bytes"], np.uint8), cv2.IMREAD_COLOR).shape == (96, 128, 3)
    cam = json.loads(row["camera_params"])
    assert cam["resolution"] == {"width": 128, "height": 96}
    p3, p2 = np.asarray(row["trajectory_3d"]), np.asarray(row["trajectory_2d"])
    assert p3[0].tolist() == [0.0, 0.0, 0.0] and p2[0].tolist() == [-1, -1] and row["horizon"] == len(p3)
    assert p3[-1, 0] >= vamos_writer.MIN_AHEAD_M  # forward is +x
    assert parse_goal(row["lang_goal"]) == tuple(float(v) for v in p2[-1]) == tuple(float(v) for v in row["goal_2d"])
    gx, gy = p2[-1]
    assert 0 <= gx < 128 and 0 <= gy < 96


def test_demo_split_reads_in_row_batches_with_flu_agreement(demo_world):
    src = make_source("vamos", demo_world / "vamos", batch_rows=5)
    eps = src.episodes("val")  # the project split "val" reads the "validation" shards
    assert len(eps) == 32 and all(e.quarantine is None for e in eps)
    assert [e.episode_id for e in eps] == [f"validation-00000-of-00001:{r:06d}" for r in range(32)]
    shard = src.report["shards"]["data/validation-00000-of-00001.parquet"]
    assert shard["convention"] == "flu" and shard["axis_agreement"]["flu"] == 1.0 and shard["axis_agreement"]["opencv"] < 0.2
    again = make_source("vamos", demo_world / "vamos").episodes("val")  # batch size changes nothing
    assert [(e.episode_id, e.record) for e in again] == [(e.episode_id, e.record) for e in eps]
    frames = src.read_frames(eps[3])
    assert frames.pixels.shape == (1, 96, 128, 3) and frames.indices.tolist() == [0]


def test_wrong_convention_is_refused_and_auto_picks_the_fitting_one(demo_world):
    src = make_source("vamos", demo_world / "vamos", axis_convention="opencv")
    eps = src.episodes("train")
    assert len(eps) == 96 and all(e.quarantine and "axis_convention 'opencv' does not fit" in e.quarantine for e in eps)
    assert "flu: 100%" in eps[0].quarantine
    assert all(s["convention"] is None and "refused" in s for s in src.report["shards"].values())
    auto = make_source("vamos", demo_world / "vamos", axis_convention="auto")
    assert all(e.quarantine is None for e in auto.episodes("train"))
    assert {s["convention"] for s in auto.report["shards"].values()} == {"flu"}


def test_camera_frame_trajectories_are_turned_into_the_robot_frame(tmp_path):
    rows = [sample(i, curve=0.3) for i in range(4)]
    flu_root, cv_root = tmp_path / "flu", tmp_path / "cv"
    write(flu_root / "data/train-00000-of-00001.parquet", rows)
    cv_rows = []
    for r in rows:  # the same path in OpenCV camera axes (x right, y down, z forward), camera 0.5 m up
        p = np.asarray(r["trajectory_3d"])
        cv_rows.append({**r, "trajectory_3d": np.stack([-p[:, 1], 0.5 - p[:, 2], p[:, 0]], 1).tolist()})
    write(cv_root / "data/train-00000-of-00001.parquet", cv_rows)
    flu = make_source("vamos", flu_root).episodes("train")
    refused = make_source("vamos", cv_root).episodes("train")  # default flu: the data says otherwise
    assert all("does not fit" in e.quarantine for e in refused)
    cv = make_source("vamos", cv_root, axis_convention="opencv").episodes("train")
    for a, b in zip(flu, cv):
        pa_, pb = np.asarray(a.record["trajectory"]), np.asarray(b.record["trajectory"])
        np.testing.assert_allclose(pa_[:, :2], pb[:, :2], atol=1e-9)  # planar path, y left: the same sign
        assert pa_[-1, 1] > 0.5  # the path bends left


def test_projection_through_a_full_extrinsic():
    """A pitched camera given as T_cam_robot: the FLU projection goes through it."""
    pitch = math.radians(20)
    r_level = np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]], float)  # robot FLU -> camera axes
    r_pitch = np.array([[1, 0, 0], [0, math.cos(pitch), -math.sin(pitch)], [0, math.sin(pitch), math.cos(pitch)]])
    t = np.eye(4)
    t[:3, :3] = r_pitch @ r_level
    t[:3, 3] = -(r_pitch @ r_level) @ np.array([0.0, 0.0, 0.8])
    k, tt, h = parse_camera(json.dumps({"K": sum(K, []), "T_cam_robot": t.tolist()}))
    pts = np.array([[2.0, 0.3, 0.0], [1.0, -0.2, 0.0]])
    uv, front = project(pts, "flu", k, tt, h)
    cam = pts @ t[:3, :3].T + t[:3, 3]
    want = cam[:, :2] / cam[:, 2:] * 60 + [31.5, 23.5]
    np.testing.assert_allclose(uv, want, atol=1e-9)
    assert front.all()
    assert parse_camera({"intrinsics": [60, 60, 31.5, 23.5]})[0].tolist() == K


# -- shards written by the real datasets library ----------------------------------------------------


def test_shards_written_by_the_datasets_library(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    rows = [sample(i, curve=0.1 * i) for i in range(6)]
    images = [Image.open(io.BytesIO(r["image"]["bytes"])) for r in rows]
    features = datasets.Features({
        "image": datasets.Image(), "trajectory_3d": datasets.Sequence(datasets.Sequence(datasets.Value("float64"))),
        "trajectory_2d": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
        "camera_params": datasets.Value("string"), "lang_goal": datasets.Value("string"),
        "text": datasets.Value("string"), "horizon": datasets.Value("int64"),
    })
    ds = datasets.Dataset.from_dict({**{k: [r[k] for r in rows] for k in features if k != "image"}, "image": images},
                                    features=features)
    (tmp_path / "data").mkdir()
    for k in range(2):  # sharded as push_to_hub names them
        ds.shard(2, k, contiguous=True).to_parquet(str(tmp_path / f"data/train-{k:05d}-of-00002.parquet"))
    assert pq.read_schema(tmp_path / "data/train-00000-of-00002.parquet").field("image").type.num_fields == 2
    src = make_source("vamos", tmp_path)
    eps = src.episodes("train")
    assert [e.quarantine for e in eps] == [None] * 6
    assert eps[3].episode_id == "train-00001-of-00002:000000"
    stored = [c["bytes"] for k in range(2) for c in pq.read_table(tmp_path / f"data/train-{k:05d}-of-00002.parquet").column("image").to_pylist()]
    for e, r, raw, img in zip(eps, rows, stored, images):
        got = src.read_frames(e).pixels[0]
        want = cv2.cvtColor(cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert np.array_equal(got, want)  # the row's own bytes, found through its shard and row
        assert np.abs(got.astype(int) - np.asarray(img.convert("RGB"), int)).mean() < 8  # and they are that image
        np.testing.assert_allclose(e.record["trajectory"], r["trajectory_3d"], atol=1e-9)


# -- bad input -------------------------------------------------------------------------------------


def test_bad_rows_are_quarantined_and_the_split_goes_on(tmp_path):
    good = [sample(i) for i in range(3)]
    nan = sample(3)
    nan["trajectory_3d"][2][0] = float("nan")
    short = {**sample(4), "trajectory_3d": [[0.0, 0.0, 0.0]], "trajectory_2d": [[-1, -1]], "horizon": None}
    nogoal = {**sample(5), "lang_goal": "go to the door", "text": None}
    notjson = {**sample(6), "camera_params": "{fx: 60"}
    badjpeg = {**sample(7), "image": {"bytes": jpeg(7)[:300], "path": None}}
    garbage = {**sample(8), "image": {"bytes": b"not an image at all", "path": None}}
    write(tmp_path / "data/train-00000-of-00003.parquet", good + [nan, short, nogoal, notjson, badjpeg, garbage])
    wrong_type = [{**sample(9), "trajectory_3d": "[[0, 0, 0], [1, 0, 0]]"}]
    write(tmp_path / "data/train-00001-of-00003.parquet", wrong_type)
    no_camera = [{k: v for k, v in sample(10).items() if k != "camera_params"}]
    write(tmp_path / "data/train-00002-of-00003.parquet", no_camera)
    (tmp_path / "data/train-00003-of-00003.parquet").write_bytes(b"PAR1 this is not parquet")
    src = make_source("vamos", tmp_path)
    eps = {e.episode_id: e for e in src.episodes("train")}
    reason = {k.split(":")[0][-14:] + ":" + k.split(":")[1][-1]: (e.quarantine or "") for k, e in eps.items()}
    assert len(eps) == 11
    assert "NaN" in reason["00000-of-00003:3"] and "fewer than 2" in reason["00000-of-00003:4"]
    assert "no <point" in reason["00000-of-00003:5"] and "not JSON" in reason["00000-of-00003:6"]
    assert "list of" in reason["00001-of-00003:0"]
    assert "lacks column(s) camera_params" in reason["00002-of-00003:0"]
    assert [n.split(":")[0] for n in src.report["not_parquet"]] == ["data/train-00003-of-00003.parquet"]
    ok = [e for e in eps.values() if e.quarantine is None]
    assert len(ok) == 5  # the 3 good rows and the 2 whose bytes only decoding can judge
    for e in ok[:3]:
        assert src.read_frames(e).pixels.shape == (1, 48, 64, 3)
    for e in ok[3:]:
        with pytest.raises(Quarantine, match="truncated JPEG|do not decode"):
            src.read_frames(e)


def test_missing_shards_and_bad_options(tmp_path):
    with pytest.raises(DatasetError, match="no shard matches"):
        make_source("vamos", tmp_path).episodes("train")
    with pytest.raises(ConfigError, match="axis_convention"):
        make_source("vamos", tmp_path, axis_convention="enu")
    with pytest.raises(ConfigError, match="min_axis_agreement"):
        make_source("vamos", tmp_path, min_axis_agreement=1.5)


def test_id_column_and_changed_bytes(tmp_path):
    rows = [{**sample(i), "id": f"s{9 - i}"} for i in range(3)]
    path = write(tmp_path / "data/train-00000-of-00001.parquet", rows, row_group_size=2)
    src = make_source("vamos", tmp_path)
    eps = src.episodes("train")
    assert [e.episode_id for e in eps] == ["s7", "s8", "s9"]
    assert src.read_frames(eps[0]).pixels.shape == (1, 48, 64, 3)  # row 2: the second row group
    rows[2]["image"] = {"bytes": jpeg(99), "path": None}
    write(path, rows)
    with pytest.raises(Quarantine, match="changed since"):
        make_source("vamos", tmp_path).read_frames(eps[0])
