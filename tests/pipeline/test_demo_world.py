"""The embedded demo world: formats, determinism, geometry and the rover label rule."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from navcache.cache_specs.labels import ACTION, LABELS, REASON, RISK, TELEMETRY_FIELDS
from navcache.pipeline.demo import FORMAT, DemoInfo, generate_demo
from navcache.pipeline.demo.labels import CONE_DEG, DARK_LIGHT, FOG_M, Observation, observe, rover_labels
from navcache.pipeline.demo.navila_writer import NAVILA_CAM, make_episode
from navcache.pipeline.demo.render import (KIND_BOX, KIND_CEILING, KIND_FLOOR, KIND_PERSON, KIND_WALL, Camera, Columns,
                                  cast_columns, render)
from navcache.pipeline.demo.rover_writer import N_FRAMES, ROVER_CAM, sample_scene
from navcache.pipeline.demo.world import CEILING_H, layout_from_grid

ANSWER = re.compile(r"^(?:move forward (25|50|75) cm|turn (left|right) (15|30|45) degree|stop)$")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoInfo:
    return generate_demo(tmp_path_factory.mktemp("demo") / "world", workers=2)


def _records(info: DemoInfo, split: str) -> tuple[list[dict], dict[str, list]]:
    ann = json.loads((info.navila_root / f"annotations_{split}.json").read_text())
    poses = json.loads((info.navila_root / f"poses_{split}.json").read_text())
    return ann, poses


def _episode_poses(ann: list[dict], poses: dict[str, list]) -> dict[str, np.ndarray]:
    """Full pose track per episode, from its longest record (the final "stop" one)."""
    best: dict[str, str] = {}
    for r in ann:
        eid = r["video_id"].rsplit("-", 1)[0]
        if eid not in best or len(r["frames"]) > len(poses[best[eid]]):
            best[eid] = r["video_id"]
    return {eid: np.array(poses[vid]) for eid, vid in best.items()}


# ---------------------------------------------------------------- generation / determinism


def test_demo_info_and_cache(demo: DemoInfo):
    meta = json.loads((demo.root / "demo_info.json").read_text())
    assert meta["format"] == FORMAT and meta["seed"] == 0 and meta["scale"] == 1.0
    assert demo.counts["navila/train/episodes"] == 8 and demo.counts["navila/val/episodes"] == 3
    assert demo.counts["rover/train/clips"] == 240 and demo.counts["rover/val/clips"] == 80
    assert sorted(p.name for p in demo.root.parent.iterdir()) == ["world"]  # no tmp/old siblings left
    stamp = (demo.root / "demo_info.json").stat().st_mtime_ns
    again = generate_demo(demo.root, workers=2)
    assert again == demo and (demo.root / "demo_info.json").stat().st_mtime_ns == stamp


def test_deterministic_bytes_regardless_of_workers(tmp_path: Path):
    a = generate_demo(tmp_path / "a", scale=0.05, seed=3, workers=1)
    b = generate_demo(tmp_path / "b", scale=0.05, seed=3, workers=2)
    files_a = sorted(p.relative_to(a.root) for p in a.root.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b.root) for p in b.root.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 50
    for rel in files_a:
        assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes(), rel
    c = generate_demo(tmp_path / "c", scale=0.05, seed=4, workers=1)
    assert (c.rover_root / "train.parquet").read_bytes() != (a.rover_root / "train.parquet").read_bytes()


def test_replaces_other_demo_but_never_foreign_folder(tmp_path: Path):
    out = tmp_path / "w"
    generate_demo(out, scale=0.02, seed=1, workers=1)
    info = generate_demo(out, scale=0.02, seed=2, workers=1)
    assert json.loads((out / "demo_info.json").read_text())["seed"] == 2 and info.seed == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        generate_demo(foreign, scale=0.02, workers=1)
    assert (foreign / "notes.txt").read_text() == "keep"


def test_pixel_free_demo_has_the_same_records_and_poses(demo: DemoInfo, tmp_path: Path):
    lean = generate_demo(tmp_path / "lean", pixels=False, workers=1)
    for split in ("train", "val"):
        for name in (f"annotations_{split}.json", f"poses_{split}.json"):
            assert (lean.navila_root / name).read_bytes() == (demo.navila_root / name).read_bytes(), name
    assert not list(lean.root.rglob("*.jpg")) and not (lean.root / "videos").exists()
    assert not (lean.rover_root / "train.parquet").exists()
    assert json.loads((lean.root / "demo_info.json").read_text())["pixels"] is False
    assert lean.counts["navila/train/samples"] == demo.counts["navila/train/samples"]
    full = generate_demo(lean.root, workers=1)  # asking for pixels replaces it
    assert (full.rover_root / "train.parquet").is_file() and list(full.root.rglob("*.jpg"))


def test_ensure_demo_keeps_a_pixel_free_demo(tmp_path: Path):
    from navcache.pipeline.project import ensure_demo

    generate_demo(tmp_path / "d", scale=0.05, pixels=False, workers=1)
    said = []
    assert ensure_demo(tmp_path / "d", say=said.append, scale=1.0) is False
    meta = json.loads((tmp_path / "d" / "demo_info.json").read_text())
    assert meta["pixels"] is False and meta["scale"] == 0.05 and "no pixels" in said[0]
    assert f"navcache demo-data {tmp_path / 'd'} --scale 0.05" in said[0]
    assert not (tmp_path / "d" / "rover" / "train.parquet").exists()


# ---------------------------------------------------------------- NaVILA format


@pytest.mark.parametrize("split", ["train", "val"])
def test_navila_files_parse(demo: DemoInfo, split: str):
    ann, poses = _records(demo, split)
    assert isinstance(ann, list) and 8 * demo.counts[f"navila/{split}/episodes"] <= len(ann)
    assert any(len(r["frames"]) < 8 for r in ann)  # NaVILA pads short histories at the front
    for r in ann:
        assert set(r) == {"video_id", "frames", "q", "a"} and ANSWER.match(r["a"]), r
        eid, t = r["video_id"].rsplit("-", 1)
        assert r["frames"] == [f"{eid}/frame_{k:03d}.jpg" for k in range(int(t) + 1)]
        assert len(poses[r["video_id"]]) == len(r["frames"])
        assert r["q"].endswith(".") and "stop next to the" in r["q"]
    assert set(poses) == {r["video_id"] for r in ann}
    ep = demo.navila_root / split / ann[0]["frames"][0].split("/")[0]
    intr = json.loads((ep / "intrinsics.json").read_text())
    assert intr["fx"] == intr["fy"] == 64.0 and (intr["cx"], intr["cy"], intr["width"]) == (64.0, 64.0, 128)
    assert intr["hfov_deg"] == 90.0 and intr["camera_height_m"] == pytest.approx(0.9)
    img = cv2.imread(str(ep / "frame_000.jpg"))
    assert img is not None and img.shape == (128, 128, 3)
    depth = cv2.imread(str(ep / "depth_000.png"), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16 and depth.shape == (128, 128)


def test_navila_frames_and_depth_match_renderer(demo: DemoInfo):
    layout, traj = make_episode(0, "val", 1)
    ann, poses = _records(demo, "val")
    track = _episode_poses(ann, poses)["ep0001"]
    np.testing.assert_allclose(track, traj.poses, atol=1e-6)
    for k in (0, len(track) // 2, len(track) - 1):
        frame = render(layout, traj.poses[k], NAVILA_CAM)
        mm = cv2.imread(str(demo.navila_root / "val" / "ep0001" / f"depth_{k:03d}.png"), cv2.IMREAD_UNCHANGED)
        assert np.abs(mm / 1000.0 - frame.depth).max() <= 0.0005 + 1e-6  # within 1 mm
        jpg = cv2.imread(str(demo.navila_root / "val" / "ep0001" / f"frame_{k:03d}.jpg"))[..., ::-1]
        assert np.abs(jpg.astype(int) - frame.rgb).mean() < 4.0


@pytest.mark.parametrize("split", ["train", "val"])
def test_navila_answers_match_pose_changes(demo: DemoInfo, split: str):
    ann, poses = _records(demo, split)
    tracks = _episode_poses(ann, poses)
    for r in ann:
        eid, t = r["video_id"].rsplit("-", 1)
        t, p = int(t), tracks[eid]
        np.testing.assert_array_equal(np.array(poses[r["video_id"]]), p[: t + 1])  # a prefix of the episode
        step = np.diff(p, axis=0)
        moved = np.hypot(step[:, 0], step[:, 1])
        turned = np.degrees((step[:, 2] + math.pi) % (2 * math.pi) - math.pi)
        prim = np.where(moved > 0.2, "forward", np.where(turned > 1, "left", "right"))
        # every transition is exactly one primitive: 25 cm straight, or a 15 degree turn in place
        assert np.all(np.where(moved > 0.2, np.abs(moved - 0.25) < 1e-4, moved < 1e-6))
        assert np.all(np.where(moved > 0.2, np.abs(turned) < 1e-3, np.abs(np.abs(turned) - 15) < 1e-3))
        m = ANSWER.match(r["a"])
        if r["a"] == "stop":
            assert t == len(p) - 1
            continue
        n = int(m.group(1)) // 25 if m.group(1) else int(m.group(3)) // 15
        kind = "forward" if m.group(1) else m.group(2)
        assert list(prim[t: t + n]) == [kind] * n, r
        if m.group(1):
            assert math.hypot(*(p[t + n, :2] - p[t, :2])) == pytest.approx(0.25 * n, abs=1e-4)
        else:
            d = math.degrees((p[t + n, 2] - p[t, 2] + math.pi) % (2 * math.pi) - math.pi)
            assert d == pytest.approx(15 * n if kind == "left" else -15 * n, abs=1e-3)
        assert n == 3 or t + n == len(p) - 1 or prim[t + n] != kind  # merges are maximal


def test_val_layouts_unseen_in_train():
    def key(layout) -> bytes:
        return layout.grid.tobytes() + layout.boxes.round(6).tobytes() + layout.persons.round(6).tobytes()

    nav = {s: {key(make_episode(0, s, i)[0]) for i in range(3)} for s in ("train", "val")}
    rover = {s: {key(sample_scene(0, s, i).layout) for i in range(24)} for s in ("train", "val")}
    assert not nav["train"] & nav["val"] and not rover["train"] & rover["val"]
    assert len(rover["val"]) == 24  # clips do not share layouts either


# ---------------------------------------------------------------- rover format and labels


@pytest.mark.parametrize("split", ["train", "val"])
def test_rover_parquet_and_videos(demo: DemoInfo, split: str):
    import decord

    table = pq.read_table(demo.rover_root / f"{split}.parquet")
    assert table.schema.equals(pa.schema([
        ("clip_id", pa.string()), ("video", pa.string()), ("fps", pa.float64()), ("n_frames", pa.int64()),
        ("telemetry", pa.list_(pa.float32())), ("risk", pa.string()), ("reason", pa.string()),
        ("action", pa.string()), ("weight", pa.float32())]))
    rows = table.to_pylist()
    assert len({r["clip_id"] for r in rows}) == len(rows)
    for r in rows:
        assert r["fps"] == 10.0 and r["n_frames"] == 16 and len(r["telemetry"]) == len(TELEMETRY_FIELDS)
        assert r["telemetry"][2] == pytest.approx(9.81, abs=0.3) and r["telemetry"][6] >= 0
        assert (demo.rover_root / r["video"]).is_file() and r["weight"] > 0
    for head, classes in LABELS.items():
        counts = {c: sum(r[head] == c for r in rows) for c in classes}
        assert all(counts.values()), (split, head, counts)  # every class present
        assert counts == demo.class_balance[split][head]
    for r in rows[:: max(1, len(rows) // 12)]:
        vr = decord.VideoReader(str(demo.rover_root / r["video"]))
        assert len(vr) == N_FRAMES and vr[0].shape == (128, 128, 3)


def _columns_from_frame(kind: np.ndarray, depth: np.ndarray) -> Columns:
    """Per-column nearest non floor/ceiling pixel of a rendered frame, as the label rule sees it."""
    d = np.where((kind == KIND_FLOOR) | (kind == KIND_CEILING), np.inf, depth.astype(np.float64))
    row = d.argmin(0)
    cols = np.arange(kind.shape[1])
    return Columns(d[row, cols], kind[row, cols], np.zeros(kind.shape[1], np.int64))


def test_rover_labels_follow_from_rendered_last_frame(demo: DemoInfo):
    rows = pq.read_table(demo.rover_root / "val.parquet").to_pylist()
    ang = np.degrees(ROVER_CAM.column_angles())
    cone = np.abs(ang) <= CONE_DEG
    seen = set()
    for i, r in enumerate(rows):
        scene = sample_scene(0, "val", i)
        assert (scene.risk, scene.reason, scene.action) == (r["risk"], r["reason"], r["action"])
        np.testing.assert_array_equal(scene.telemetry, np.array(r["telemetry"], np.float32))
        frame = render(scene.layout, scene.poses[-1], ROVER_CAM, scene.light, scene.fog_m)
        cols = _columns_from_frame(frame.kind, frame.depth)
        v = r["telemetry"][TELEMETRY_FIELDS.index("v")]
        assert rover_labels(observe(cols, ROVER_CAM, scene.light, scene.fog_m), v) == (r["risk"], r["reason"], r["action"])
        blind = scene.light < DARK_LIGHT or scene.fog_m < FOG_M
        nearest = cols.kind[cone][cols.depth[cone].argmin()]
        if r["reason"] == "human":
            assert nearest == KIND_PERSON and (frame.kind[:, cone] == KIND_PERSON).any()
        if r["reason"] == "obstacle":
            assert nearest in (KIND_BOX, KIND_WALL)
        if r["reason"] == "unknown" and r["risk"] != "none":
            assert blind
        if scene.light < DARK_LIGHT:
            assert frame.rgb.mean() < 40
        if r["action"] == "reverse":
            assert cols.depth[cone].min() < 0.45
        seen.add(r["reason"])
    assert seen == set(REASON)


def test_label_rule_branches():
    obs = lambda kind, d, left=3.0, right=3.0, light=1.0, fog=math.inf: Observation(kind, d, left, right, light, fog)  # noqa: E731
    assert rover_labels(obs(KIND_PERSON, 1.0), 1.0) == ("high", "human", "stop")
    assert rover_labels(obs(KIND_PERSON, 3.0), 1.0) == ("medium", "human", "slow")
    assert rover_labels(obs(KIND_PERSON, 5.0), 1.0) == ("low", "human", "continue")
    assert rover_labels(obs(KIND_PERSON, 8.0), 1.0) == ("none", "unknown", "continue")
    assert rover_labels(obs(KIND_BOX, 1.0, left=2.0, right=1.5), 1.0) == ("high", "obstacle", "turn_left")
    assert rover_labels(obs(KIND_BOX, 1.0, left=1.2, right=1.5), 1.0) == ("high", "obstacle", "turn_right")
    assert rover_labels(obs(KIND_BOX, 0.3), 0.1) == ("high", "obstacle", "reverse")
    assert rover_labels(obs(KIND_WALL, 1.7, 0.8, 0.8), 0.9) == ("high", "tight_space", "stop")
    assert rover_labels(obs(KIND_WALL, 1.7, 0.8, 0.8), 0.2) == ("low", "tight_space", "continue")
    assert rover_labels(obs(KIND_PERSON, 1.0, light=0.1), 1.0) == ("medium", "unknown", "slow")
    assert rover_labels(obs(KIND_PERSON, 1.0, fog=1.0), 0.2) == ("low", "unknown", "continue")
    for kind in (KIND_WALL, KIND_BOX, KIND_PERSON):
        for d in (0.2, 0.6, 1.5, 4.0, 9.0):
            for side in (0.7, 2.0):
                for v in (0.0, 0.3, 0.7, 1.2):
                    risk, reason, action = rover_labels(obs(kind, d, side, 1.4), v)
                    assert risk in RISK and reason in REASON and action in ACTION


# ---------------------------------------------------------------- renderer geometry


def _room(persons=(), boxes=()):
    grid = np.zeros((12, 12), np.uint8)
    grid[1:11, 1:11] = 1  # one room spanning x, y in [0.5, 5.5] m
    return layout_from_grid(grid, boxes=boxes, persons=persons)


def test_depth_of_wall_straight_ahead():
    cam = Camera()
    yn = (np.arange(cam.height) + 0.5 - cam.cy) / cam.fy
    for pose, dist in (((1.5, 3.0, 0.0), 4.0), ((3.0, 2.0, math.pi / 2), 3.5), ((4.0, 3.0, math.pi), 3.5)):
        f = render(_room(), pose, cam)
        centre = slice(40, 88)  # |angle| < 20 degrees: only the facing wall
        expect = np.where(yn > 0, np.minimum(cam.height_m / yn, dist),
                          np.minimum((cam.height_m - CEILING_H) / yn, dist))
        np.testing.assert_allclose(f.depth[:, centre], np.broadcast_to(expect[:, None], (128, 48)), rtol=1e-5)
        assert (f.kind[60:68, centre] == KIND_WALL).all() and f.kind[0, 64] == KIND_CEILING
        assert f.kind[127, 64] == KIND_FLOOR and f.rgb.dtype == np.uint8 and f.rgb.shape == (128, 128, 3)
        np.testing.assert_allclose(cast_columns(_room(), pose, cam).depth[centre], dist, rtol=1e-9)


def test_objects_occlude_at_their_distance():
    layout = _room(persons=[(4.0, 3.0, 0.25, 1.7)], boxes=[(2.5, 4.0, 3.0, 4.5, 0.6)])
    f = render(layout, (1.5, 3.0, 0.0))
    assert f.kind[64, 64] == KIND_PERSON and f.depth[64, 64] == pytest.approx(2.25, abs=2e-3)
    assert f.kind[0, 64] == KIND_CEILING  # the person ends at 1.7 m, the ceiling shows above
    g = render(layout, (2.75, 2.0, math.pi / 2))  # facing the box from 2 m, camera above its lid
    assert g.kind[85, 64] == KIND_BOX and g.depth[85, 64] == pytest.approx(2.0, abs=1e-4)
    assert g.kind[64, 64] == KIND_WALL and g.depth[64, 64] == pytest.approx(3.5, abs=1e-4)


def test_render_is_fast():
    import time

    layout = make_episode(0, "train", 0)[0]
    pose = make_episode(0, "train", 0)[1].poses[0]
    render(layout, pose)
    t = time.perf_counter()
    for _ in range(50):
        render(layout, pose)
    assert (time.perf_counter() - t) / 50 < 0.02  # a few ms at 128x128; generous for loaded CI boxes
