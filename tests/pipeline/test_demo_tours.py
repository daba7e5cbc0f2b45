"""Demo tours (room A -> room B -> room A) written for the ``videos`` source: determinism, the
revisit, and ground-truth geometry that unprojects onto the surfaces the ray caster hit."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from navcache.pipeline.decode import read_video
from navcache.pipeline.demo.agent import AGENT_RADIUS
from navcache.pipeline.demo.render import KIND_CEILING, KIND_FLOOR, KIND_WALL, render
from navcache.pipeline.demo.video_writer import (FPS, MAX_FRAMES, MAX_TURN, MIN_FRAMES, PAN_TURN, TOUR_CAM, extrinsics,
                                        intrinsics, make_tour, write_tour)
from navcache.pipeline.demo.world import CEILING_H, CORRIDOR
from navcache.pipeline.sources.videos import VideosSource

CASES = [(0, "train", 0), (0, "train", 5), (0, "val", 1), (7, "train", 3)]


@pytest.fixture(scope="module")
def tours(tmp_path_factory) -> tuple[Path, dict[tuple[str, int], dict]]:
    root = tmp_path_factory.mktemp("tours")
    rows = {(split, i): write_tour(root, 0, split, i) for split, i in [("train", 0), ("train", 1), ("val", 0)]}
    return root, rows


def world_points(depth: np.ndarray, k: np.ndarray, e: np.ndarray) -> np.ndarray:
    """[H, W] z-depth, [3, 3] OpenCV intrinsics, [3, 4] camera-from-world -> world points [H, W, 3]."""
    v, u = np.indices(depth.shape, dtype=np.float64)
    d = depth.astype(np.float64)
    cam = np.stack([(u - k[0, 2]) / k[0, 0] * d, (v - k[1, 2]) / k[1, 1] * d, d], -1)
    return (cam - e[:, 3]) @ e[:, :3]  # R^T (x_cam - t), row-vector form


def wall_distance(layout, xy: np.ndarray) -> np.ndarray:
    """Ground-plane distance of points [N, 2] to the nearest wall face."""
    p = xy[:, None, :]
    q = np.clip(p, layout.seg[None, :, 0:2], layout.seg[None, :, 2:4])
    return np.linalg.norm(p - q, axis=2).min(1)


# --------------------------------------------------------------------------------- the walk


@pytest.mark.parametrize("seed, split, index", CASES)
def test_tour_leaves_its_first_room_and_comes_back(seed, split, index):
    tour = make_tour(seed, split, index)
    poses, (a, b) = tour.poses, tour.rooms
    assert MIN_FRAMES <= len(poses) <= MAX_FRAMES and a != b
    region = tour.layout.region_at(poses[:, :2])
    assert region[0] == a and region[-1] == a
    left = int(np.argmax(region != a))
    assert left > 0, "the tour never leaves its first room"
    arrived = left + int(np.argmax(region[left:] == b))
    assert region[arrived] == b, "the tour never reaches the other room"
    back = arrived + int(np.argmax(region[arrived:] == a))
    assert region[back] == a and back == tour.revisit_frame
    assert set(region[left:back].tolist()) <= {b, CORRIDOR, *(r.rid for r in tour.layout.rooms if r.rid != a)}
    assert "come back to the room where you started" in tour.instruction

    # smooth and safe: small steps, bounded turns, clear of every wall and object
    step = np.linalg.norm(np.diff(poses[:, :2], axis=0), axis=1)
    turn = np.abs((np.diff(poses[:, 2]) + math.pi) % (2 * math.pi) - math.pi)
    assert step.max() <= 0.2 + 1e-9 and turn.max() <= max(MAX_TURN, PAN_TURN) + 1e-9
    assert (tour.layout.clearance(poses[:, :2]) >= AGENT_RADIUS).all()


def test_tours_are_deterministic_and_seeded():
    a, b = make_tour(0, "train", 2), make_tour(0, "train", 2)
    np.testing.assert_array_equal(a.poses, b.poses)
    assert a.instruction == b.instruction and a.rooms == b.rooms
    assert make_tour(0, "val", 2).layout.name != a.layout.name  # val never reuses a train layout
    assert not np.array_equal(make_tour(1, "train", 2).poses[:5], a.poses[:5])


def test_written_bytes_do_not_depend_on_the_clock(tmp_path, monkeypatch):
    first = write_tour(tmp_path / "a", 3, "train", 1)
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)  # np.savez would stamp members with it
    second = write_tour(tmp_path / "b", 3, "train", 1)
    assert first == second
    folder_a, folder_b = tmp_path / "a" / "videos" / "train", tmp_path / "b" / "videos" / "train"
    names = sorted(p.name for p in folder_a.iterdir())
    assert names == ["tour_0001.gt.npz", "tour_0001.json", "tour_0001.mp4"]
    assert names == sorted(p.name for p in folder_b.iterdir())
    for name in names:
        assert (folder_a / name).read_bytes() == (folder_b / name).read_bytes(), name
    pix_a, n_a = read_video(folder_a / "tour_0001.mp4", None)
    pix_b, n_b = read_video(folder_b / "tour_0001.mp4", None)
    assert n_a == n_b == first["n_frames"]
    np.testing.assert_array_equal(pix_a, pix_b)
    write_tour(tmp_path / "c", 4, "train", 1)  # another seed, another tour
    assert (tmp_path / "c" / "videos" / "train" / "tour_0001.gt.npz").read_bytes() != (folder_a / names[0]).read_bytes()


# ----------------------------------------------------------------------------- ground truth


def test_files_hold_the_documented_arrays(tours):
    root, rows = tours
    row = rows["train", 0]
    folder = root / "videos" / "train"
    with np.load(folder / "tour_0000.gt.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["depth", "extrinsics", "intrinsics"]
        n = row["n_frames"]
        assert z["depth"].dtype == np.float16 and z["depth"].shape == (n, 128, 128)
        assert z["extrinsics"].dtype == np.float32 and z["extrinsics"].shape == (n, 3, 4)
        assert z["intrinsics"].dtype == np.float32
        np.testing.assert_array_equal(z["intrinsics"], [[64, 0, 63.5], [0, 64, 63.5], [0, 0, 1]])
        assert (z["depth"] > 0).all() and np.isfinite(z["depth"]).all()  # a closed world: every pixel hits
        e = z["extrinsics"].astype(np.float64)
    tour = make_tour(0, "train", 0)
    centre = -np.einsum("nji,nj->ni", e[:, :, :3], e[:, :, 3])  # C = -R^T t
    np.testing.assert_allclose(centre, np.c_[tour.poses[:, :2], np.full(len(e), 0.9)], atol=1e-5)
    np.testing.assert_allclose(e[:, 2, :2], np.c_[np.cos(tour.poses[:, 2]), np.sin(tour.poses[:, 2])], atol=1e-6)
    meta = json.loads((folder / "tour_0000.json").read_text())
    assert meta["instruction"] == tour.instruction and meta["revisit_frame"] == tour.revisit_frame
    assert meta["rooms"] == [tour.rooms[0], tour.rooms[1], tour.rooms[0]] == row["rooms"]


def _check_surfaces(layout, points: np.ndarray, kind: np.ndarray, depth: np.ndarray, rel: float) -> None:
    """Floor points at z=0, ceiling points at z=CEILING_H, wall points on a wall face.

    ``rel``: tolerance per metre of depth (the stored depth is float16).
    """
    tol = rel * depth.astype(np.float64) + 1e-5
    floor, ceiling, wall = kind == KIND_FLOOR, kind == KIND_CEILING, kind == KIND_WALL
    assert floor.any() and wall.any()
    assert np.abs(points[floor][:, 2]).max() <= 1e-3
    assert (np.abs(points[floor][:, 2]) <= tol[floor]).all()
    if ceiling.any():
        assert (np.abs(points[ceiling][:, 2] - CEILING_H) <= tol[ceiling]).all()
    assert (wall_distance(layout, points[wall][:, :2]) <= tol[wall]).all()
    assert (points[wall][:, 2] > -tol[wall]).all() and (points[wall][:, 2] < CEILING_H + tol[wall]).all()


def test_unprojected_depth_lands_on_the_surfaces_the_ray_caster_hit(tours):
    root, rows = tours
    n = rows["val", 0]["n_frames"]
    tour = make_tour(0, "val", 0)
    with np.load(root / "videos" / "val" / "tour_0000.gt.npz", allow_pickle=False) as z:
        depth16, e, k = z["depth"], z["extrinsics"].astype(np.float64), z["intrinsics"].astype(np.float64)
    for t in sorted({0, n // 3, tour.revisit_frame, n - 1}):
        frame = render(tour.layout, tour.poses[t], TOUR_CAM)
        # exact convention check with the renderer's float32 depth (a half-pixel error would be ~1e-2)
        _check_surfaces(tour.layout, world_points(frame.depth, k, e[t]), frame.kind, frame.depth, rel=2e-6)
        # the stored float16 depth, within its rounding (relative 2^-11, times the ray's length)
        np.testing.assert_allclose(depth16[t], frame.depth, rtol=2 ** -11, atol=0)
        _check_surfaces(tour.layout, world_points(depth16[t], k, e[t]), frame.kind, frame.depth, rel=1e-3)
    # the module helpers say the same thing as the file
    np.testing.assert_allclose(extrinsics(tour.poses), e, atol=1e-6)
    np.testing.assert_array_equal(intrinsics(), k)


# ---------------------------------------------------------------------------- videos source


def test_tours_read_by_the_videos_source_without_quarantine(tours):
    root, rows = tours
    src = VideosSource(root / "videos", num_frames=32)
    for split, want in (("train", ["tour_0000", "tour_0001"]), ("val", ["tour_0000"])):
        eps = src.episodes(split)
        assert [ep.episode_id for ep in eps] == want
        for ep in eps:
            row = rows[split, int(ep.episode_id[-4:])]
            assert ep.quarantine is None
            rec = ep.record
            assert rec["media"] == row["media"] and rec["kind"] == "video" and rec["fps"] == FPS
            assert rec["n_frames"] == row["n_frames"] and rec["gt_geometry"] == f"{split}/{ep.episode_id}.gt.npz"
            assert rec["meta"]["instruction"].startswith("Start in ")
            idx = np.linspace(0, row["n_frames"] - 1, 32).astype(int)
            assert rec["sample_indices"] == idx.tolist()

    ep = src.episodes("train")[0]
    frames = src.read_frames(ep)
    tour = make_tour(0, "train", 0)
    want = np.stack([render(tour.layout, tour.poses[t], TOUR_CAM).rgb for t in frames.indices])
    err = np.abs(frames.pixels.astype(np.int16) - want).mean(axis=(1, 2, 3))
    assert err.max() < 8, err  # mp4v at 128x128: small codec error, never the wrong frame

    gt = src.load_gt_geometry(ep)
    with np.load(root / "videos" / "train" / "tour_0000.gt.npz") as z:
        np.testing.assert_array_equal(gt["depth"], z["depth"][frames.indices].astype(np.float32))
        np.testing.assert_array_equal(gt["extrinsics"], z["extrinsics"][frames.indices])
    assert gt["intrinsics"].shape == (32, 3, 3)
