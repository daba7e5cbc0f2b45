"""The ``covisibility`` stage on demo-world tours: the seed's example (a table ahead, a chair to the
left), occlusion by a wall, bad input, and exactness against a per-pair numpy reference."""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from navcache.cache_specs import open_cache
from navcache.cache_specs.verify import verify_cache
from navcache.pipeline import covisibility as cv
from navcache.pipeline.camera import relative_to_first, unproject
from navcache.pipeline.commands import EXIT_QUARANTINE, extract_cmd
from navcache.pipeline.config import config_from_dict
from navcache.pipeline.demo.render import KIND_BOX, render
from navcache.pipeline.demo.video_writer import FPS, TOUR_CAM, extrinsics, intrinsics, save_npz
from navcache.pipeline.demo.world import layout_from_grid
from navcache.pipeline.errors import Quarantine
from navcache.pipeline.runner import ExtractOptions, extract
from navcache.pipeline.stages.covisibility import CovisibilitySettings, CovisibilityStage

G = 16
LEFT, RIGHT, ABOVE, BELOW, BEHIND = (G * G + i for i in range(5))
# one 6 x 6 m room; the camera stands at its centre facing +x: a table 1.6-2.2 m ahead, a chair
# 2 m away at 60 degrees to the left (outside the 90-degree view until the camera turns)
CENTRE = (3.0, 3.0)
TABLE = (4.6, 2.6, 5.2, 3.4, 0.75)
CHAIR = (3.7, 4.43, 4.3, 5.03, 0.9)
# frames 0-5 turn left to +60 degrees, frames 6-15 turn right to -60 degrees
PAN_DEG = [0, 12, 24, 36, 48, 60, 48, 36, 24, 12, 0, -12, -24, -36, -48, -60]


def room(walls_at_col: int | None = None):
    """A 14 x 14-cell room (6 x 6 m inside); optionally a full wall at grid column ``walls_at_col``."""
    grid = np.ones((14, 14), np.uint8)
    if walls_at_col is not None:
        grid[:, walls_at_col] = 0
        grid[:, walls_at_col + 1:] = 2
    return layout_from_grid(grid, boxes=[TABLE, CHAIR])


def pan_poses() -> np.ndarray:
    return np.array([(*CENTRE, math.radians(d)) for d in PAN_DEG])


def geometry_rows(layout, poses: np.ndarray, stride: int = 2, only_kind: int | None = None):
    """Geometry rows as the ``gt`` provider stores them (first camera's world, strided, fp16), and
    keyframes rows taking every frame; ``only_kind`` keeps only that surface kind confident."""
    frames = [render(layout, p, TOUR_CAM) for p in poses]
    depth = np.stack([f.depth for f in frames]).astype(np.float64)
    ext = relative_to_first(extrinsics(poses))
    intr = np.broadcast_to(intrinsics(), (len(poses), 3, 3))
    pts = unproject(depth, intr, ext)[:, ::stride, ::stride]
    conf = np.ones(depth.shape)[:, ::stride, ::stride]
    if only_kind is not None:
        conf = (np.stack([f.kind for f in frames])[:, ::stride, ::stride] == only_kind).astype(np.float64)
    n = len(poses)
    geo = {"frame_index": np.arange(n), "extrinsic": ext.astype(np.float32), "intrinsic": intr.astype(np.float32),
           "depth": depth[:, ::stride, ::stride].astype(np.float16), "depth_conf": np.ones_like(conf, np.float16),
           "world_points": pts.astype(np.float16), "world_points_conf": conf.astype(np.float16)}
    keys = {"frame_index": np.arange(n), "position": np.arange(n), "threshold": np.ones(n, np.float32)}
    return geo, keys


def pair(out: dict, a: int, b: int) -> np.ndarray:
    row = np.nonzero((out["keyframe_a"] == a) & (out["keyframe_b"] == b))[0]
    assert len(row) == 1
    return out["target"][row[0]]


def left_half(t: np.ndarray) -> float:
    return float(t[: G * G].reshape(G, G)[:, : G // 2].sum())


def right_half(t: np.ndarray) -> float:
    return float(t[: G * G].reshape(G, G)[:, G // 2:].sum())


# --------------------------------------------------------------------------- a per-pair reference


def reference(geo: dict, keys: dict, grid: int, units_per_metre: float = 1.0) -> np.ndarray:
    """The documented rule written out pair by pair, point set by point set: targets [P, G*G+5]."""
    pos = keys["position"]
    thr = np.float32(keys["threshold"][0])
    k_n = len(pos)
    h, w = geo["depth"].shape[1:]
    s = int(round(2 * float(geo["intrinsic"][0][0, 2]) / w))
    rows = []
    for a in range(k_n):
        for b in range(k_n):
            if a == b:
                continue
            e = geo["extrinsic"][pos[a]].astype(np.float64)
            k = geo["intrinsic"][pos[a]].astype(np.float64)
            conf = geo["world_points_conf"][pos[b]].astype(np.float32)
            p = geo["world_points"][pos[b]].astype(np.float64)[(conf >= thr) & (conf > 0.1)]
            d_a = geo["depth"][pos[a]].astype(np.float64)
            counts = np.zeros(grid * grid + 5)
            for x in p:
                c = e[:, :3] @ x + e[:, 3]
                if c[2] <= 0:
                    counts[grid * grid + 4] += 1
                    continue
                u = (k[0, 0] * c[0] + k[0, 1] * c[1]) / c[2] + k[0, 2]
                v = k[1, 1] * c[1] / c[2] + k[1, 2]
                i, j = math.floor(v / s + 0.5), math.floor(u / s + 0.5)
                if 0 <= i < h and 0 <= j < w:
                    d = d_a[i, j]
                    tol = (0.1 + 0.1 * math.log(2)) * units_per_metre + 0.005 * c[2]
                    if d > 0 and abs(c[2] - d) < tol:
                        gx = min(math.floor((u + s / 2) * grid / (w * s)), grid - 1)
                        gy = min(math.floor((v + s / 2) * grid / (h * s)), grid - 1)
                        counts[gy * grid + gx] += 1
                    continue
                du, dv = (u - s * (w - 1) / 2) / (w * s / 2), (v - s * (h - 1) / 2) / (h * s / 2)
                if abs(du) >= abs(dv):
                    counts[grid * grid + (0 if du < 0 else 1)] += 1
                else:
                    counts[grid * grid + (2 if dv < 0 else 3)] += 1
            rows.append(counts / counts.sum() if counts.sum() else counts)
    return np.array(rows, np.float32)


# ------------------------------------------------------------------------------ the seed's example


def test_chair_seen_after_turning_left_lies_left_of_the_first_view():
    """Frame 0 sees the table ahead; frame 5 (turned 60 degrees left) sees the chair: the chair's
    mass must sit in frame 0's left ring cell, and the table sits to the right of frame 5's view."""
    layout, poses = room(), pan_poses()
    f0, f5 = render(layout, poses[0], TOUR_CAM), render(layout, poses[5], TOUR_CAM)
    assert (f0.kind == KIND_BOX).any() and (f5.kind == KIND_BOX).any()
    geo, keys = geometry_rows(layout, poses[[0, 5]], only_kind=KIND_BOX)
    out = cv.covisibility(cv.gather(geo, keys), G)
    chair_in_0, table_in_5 = pair(out, 0, 1), pair(out, 1, 0)
    assert chair_in_0[LEFT] > 0.95
    assert table_in_5[RIGHT] > 0.95
    np.testing.assert_allclose(out["target"].sum(1), 1.0, rtol=1e-6)


def test_pan_left_then_right_puts_mass_on_the_turn_side():
    layout, poses = room(), pan_poses()
    geo, keys = geometry_rows(layout, poses)
    out = cv.covisibility(cv.gather(geo, keys), G)
    assert len(out["target"]) == 16 * 15
    np.testing.assert_allclose(out["target"].sum(1), 1.0, rtol=1e-6)
    left, right = pair(out, 0, 5), pair(out, 0, 15)  # +60 (turned left) and -60 (turned right) seen from frame 0
    assert left[LEFT] > 0.3 and left[LEFT] > left[RIGHT] + left[ABOVE] + left[BELOW] + left[BEHIND]
    assert left_half(left) > 3 * right_half(left) and left_half(left) > 0.1
    assert right[RIGHT] > 0.3 and right_half(right) > 3 * left_half(right)
    # and the other way round: frame 0's content lies right of the left-turned view, left of the right-turned one
    assert pair(out, 5, 0)[RIGHT] > pair(out, 5, 0)[LEFT] and pair(out, 15, 0)[LEFT] > pair(out, 15, 0)[RIGHT]
    # frames 4 and 6 share a pose: B's content fills A's view, all visible
    same = np.nonzero((out["keyframe_a"] == 4) & (out["keyframe_b"] == 6))[0][0]
    assert out["visible_fraction"][same] > 0.99 and out["occluded_fraction"][same] < 0.01
    # 120 degrees apart: mostly behind or to the side, never visible
    assert pair(out, 5, 15)[: G * G].sum() < 0.05 and out["visible_fraction"][out["frame_a"] == 5][-1] < 0.05


def test_points_behind_a_wall_are_occluded_not_visible():
    """A at x=1 m facing a wall at x=3 m; B beyond it at x=4 m, facing the same way: B's far wall
    projects into A's view but lies behind A's wall."""
    poses = np.array([(1.0, 3.0, 0.0), (4.0, 3.0, 0.0)])
    open_geo, keys = geometry_rows(room(), poses)
    walled_geo, _ = geometry_rows(room(walls_at_col=6), poses)
    open_out = cv.covisibility(cv.gather(open_geo, keys), G)
    walled = cv.covisibility(cv.gather(walled_geo, keys), G)
    # B is row (A=0, B=1): without the wall B's view is visible from A, with it nothing of it is
    assert open_out["visible_fraction"][0] > 0.5
    assert walled["visible_fraction"][0] < 0.02 and walled["occluded_fraction"][0] > 0.5
    assert pair(walled, 0, 1)[: G * G].sum() < 0.05  # the kept mass is out of view only
    np.testing.assert_allclose(walled["kept_fraction"] + walled["occluded_fraction"], 1.0, rtol=1e-6)


def test_tolerance_scales_with_units_per_metre():
    poses = np.array([(1.0, 3.0, 0.0), (4.0, 3.0, 0.0)])
    geo, keys = geometry_rows(room(walls_at_col=6), poses)
    # a tolerance of many metres accepts the wall's depth for the points behind it
    loose = cv.covisibility(cv.gather(geo, keys), G, units_per_metre=100.0)
    assert loose["visible_fraction"][0] > 0.5
    np.testing.assert_array_equal(loose["target"], reference(geo, keys, G, units_per_metre=100.0))


def test_vectorised_targets_equal_the_per_pair_reference():
    layout, poses = room(walls_at_col=9), pan_poses()[::3]
    geo, keys = geometry_rows(layout, poses, stride=4)
    out = cv.covisibility(cv.gather(geo, keys), 8)
    np.testing.assert_array_equal(out["target"], reference(geo, keys, 8))
    assert out["target"].shape == (len(poses) * (len(poses) - 1), 8 * 8 + 5)


# ------------------------------------------------------------------------------------- bad input


def _quarantine_reason(geo, keys) -> str:
    stage = CovisibilityStage(CovisibilitySettings(), source=None, source_options={})
    with pytest.raises(Quarantine) as e:
        stage.prepare(type("Ep", (), {"episode_id": "x"})(), {"geometry": geo, "keyframes": keys})
    return e.value.reason


@pytest.mark.parametrize("damage, says", [
    (lambda g, k: g["extrinsic"].__setitem__((1, 0, 0), np.nan), "extrinsic is not finite"),
    (lambda g, k: g["extrinsic"].__setitem__((1, slice(None), slice(0, 3)), 0.0), "not invertible"),
    (lambda g, k: g["intrinsic"].__setitem__((0, 0, 0), 0.0), "intrinsic is not an invertible"),
    (lambda g, k: g["world_points_conf"].__setitem__(2, 0.0), "no confident world point"),
    (lambda g, k: k["position"].__setitem__(2, 7), "geometry rows missing"),
    (lambda g, k: k["frame_index"].__setitem__(1, 40), "geometry rows missing for keyframes at frames [40]"),
])
def test_bad_input_is_quarantined_with_a_reason(damage, says):
    geo, keys = geometry_rows(room(), pan_poses()[:3])
    geo = {n: np.array(a) for n, a in geo.items()}
    damage(geo, keys)
    assert says in _quarantine_reason(geo, keys)


def test_a_single_keyframe_has_no_pair():
    geo, keys = geometry_rows(room(), pan_poses()[:1])
    assert "no pair" in _quarantine_reason(geo, keys)


# ------------------------------------------------------------------------------ through the pipeline


def write_tour(folder: Path, name: str, layout, poses: np.ndarray, blank_frame: int | None = None) -> None:
    """A tour in the ``videos`` source's layout (what ``demo.video_writer`` writes for its tours);
    ``blank_frame`` gets no valid depth at all (a sensor dropout)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = cv2.VideoWriter(str(folder / f"{name}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (TOUR_CAM.width, TOUR_CAM.height))
    depth = []
    for k, pose in enumerate(poses):
        f = render(layout, pose, TOUR_CAM)
        out.write(cv2.cvtColor(f.rgb, cv2.COLOR_RGB2BGR))
        depth.append(np.zeros_like(f.depth) if k == blank_frame else f.depth)
    out.release()
    save_npz(folder / f"{name}.gt.npz", {"depth": np.stack(depth).astype(np.float16),
                                          "extrinsics": extrinsics(poses).astype(np.float32),
                                          "intrinsics": intrinsics().astype(np.float32)})
    (folder / f"{name}.json").write_text(json.dumps({"instruction": "turn left, then right"}))


@pytest.fixture(scope="module")
def pan_project(tmp_path_factory):
    root = tmp_path_factory.mktemp("covis")
    write_tour(root / "videos" / "train", "pan", room(), pan_poses())
    write_tour(root / "videos" / "train", "pan_dropout", room(), pan_poses(), blank_frame=7)
    cfg = {
        "cache_root": str(root / "cache"), "backend": "zarr",
        "datasets": {"pans": {"source": "videos", "root": str(root / "videos"), "splits": ["train"],
                              "stages": ["geometry", "keyframes", "covisibility"], "options": {"num_frames": 128}, "part_size": 4}},
        "stages": {"geometry": {"provider": "gt", "image_size": [128, 128], "stride": 2},
                   "keyframes": {"strategy": "uniform", "num_keyframes": 16}, "covisibility": {"grid": G}},
    }
    (root / "navcache.yaml").write_text(json.dumps(cfg))
    return root, config_from_dict(cfg, root)


def test_stage_builds_from_the_tour_geometry_and_keyframes(pan_project):
    root, project = pan_project
    summary = extract(project, ExtractOptions("train"))
    assert not summary.errors
    st = {s.stage: s for s in summary.stages}
    assert st["geometry"].episodes_ok == 2 and st["covisibility"].episodes_ok == 1
    (q,) = st["covisibility"].quarantined
    assert "pan_dropout" in json.dumps(q) and "keyframe at frame 7 has no confident world point" in json.dumps(q)
    assert verify_cache(st["covisibility"].cache_dir) == []
    rows = open_cache(project.cache_root, "pans", "train", "covisibility")["pan"]
    geo = open_cache(project.cache_root, "pans", "train", "geometry")["pan"]
    keys = open_cache(project.cache_root, "pans", "train", "keyframes")["pan"]
    assert len(rows["target"]) == 240 and rows["target"].shape[1] == G * G + 5
    np.testing.assert_allclose(rows["target"].sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(rows["target"], reference(geo, keys, G))
    assert (rows["frame_a"] != rows["frame_b"]).all()
    t = rows["target"][(rows["frame_a"] == 0) & (rows["frame_b"] == 5)][0]
    assert t[LEFT] > t[RIGHT] and left_half(t) > right_half(t)


def test_strict_fails_on_the_quarantined_pair_episode(pan_project, monkeypatch):
    root, _ = pan_project
    monkeypatch.chdir(root)
    assert extract_cmd(root / "navcache.yaml", ExtractOptions("train"), as_json=True, strict=True) == EXIT_QUARANTINE
