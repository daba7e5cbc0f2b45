"""VAMOS-format samples of the demo world: parquet shards named as the real dataset's.

Layout under ``<out>/vamos/``::

    data/train-00000-of-00002.parquet, data/train-00001-of-00002.parquet
    data/validation-00000-of-00001.parquet

One row per sample, taken at a timestep t of a robot driving a NaVILA demo episode's route
(``navila_writer.make_episode``; see ``drive_route``):

    image            {bytes, path}: the first-person JPEG at pose t (the struct ``datasets.Image`` writes)
    trajectory_3d    [H, 3] metres, the robot's next path (poses t .. t+H-1) in the robot frame at t:
                     x forward, y left, z up, on the floor (z = 0); point 0 is the robot itself
    trajectory_2d    [H, 2] int pixels, the path's projection (the pinhole ``camera_params``, camera
                     level at ``camera_height_m``); [-1, -1] for points not in front of the camera
    camera_params    JSON {"resolution": {width, height}, "K": 3x3 (OpenCV pixel centres), "camera_height_m"}
    lang_goal        "Navigate to <point x=U y=V>goal</point>" at the last path point's pixel
    text             "Navigate to x=<locXXXX>, y=<locXXXX>" (the VAMOS prompt, 1024-step grid)
    goal_2d, horizon the last point's pixel; the number of points

Samples keep a goal at least ``MIN_AHEAD_M`` ahead whose pixel lies in the image.

Why not the NaVILA poses themselves: NaVILA's agent moves by primitives (forward 25 cm or turn
15 degrees in place), so the first step of every path would be (0.25, 0) or (0, 0) and v_y always
0: no 2-D velocity to learn. The VAMOS robot instead drives the same route continuously
(``drive_route``): a legged base that turns towards a look-ahead point on the route, steps partly
sideways towards it, slows in turns, and slows when the free space straight ahead -- what the
camera shows -- is short. So a sample's first velocity depends on the goal and on the image.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

from .agent import wrap
from .navila_writer import JPEG_QUALITY, make_episode
from .render import Camera, render
from .world import SPLITS

VAMOS_CAM = Camera(width=128, height=96, hfov_deg=90.0, height_m=0.9)
#: points per trajectory (the robot's position and the next H - 1 poses)
HORIZON = 9
#: the goal (last point) lies at least this far ahead, so its pixel is inside the image
MIN_AHEAD_M = 1.2
#: samples per split at scale 1, and the shards they are written into (named like VAMOS's)
SAMPLES = {"train": 96, "val": 32}
SHARDS = {"train": 2, "val": 1}
SHARD_SPLIT = {"train": "train", "val": "validation"}
SAMPLES_PER_EPISODE = 8
ROW_GROUP = 16

#: the route-driving robot (``drive_route``): top speed (m per path step), turn limit (rad per
#: step), look-ahead along the route (m), and the free-space scan straight ahead (m)
V_MAX, TURN_MAX, LOOK_AHEAD = 0.3, math.radians(30), 0.6
SCAN_STEP, SCAN_MAX, SCAN_CLEAR = 0.1, 6.0, 0.15


def _route(poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NaVILA poses [T, 3] -> (route polyline [K, 2] without the turn-in-place repeats, arc length [K])."""
    p = poses[:, :2]
    p = p[np.r_[True, np.linalg.norm(np.diff(p, axis=0), axis=1) > 1e-9]]
    return p, np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))]


def _free_ahead(layout, x: float, y: float, yaw: float) -> float:
    """Metres of free floor straight ahead (clearance >= SCAN_CLEAR), scanned every SCAN_STEP up to SCAN_MAX."""
    s = np.arange(1, int(round(SCAN_MAX / SCAN_STEP)) + 1) * SCAN_STEP
    ray = np.stack([x + s * math.cos(yaw), y + s * math.sin(yaw)], 1)
    blocked = np.flatnonzero(layout.clearance(ray) < SCAN_CLEAR)
    return float(s[blocked[0]]) if len(blocked) else SCAN_MAX


def drive_route(layout, poses: np.ndarray, max_steps: int = 240) -> np.ndarray:
    """The VAMOS robot's poses [T', 3] (x, y, yaw) driving the route of NaVILA poses [T, 3] from its first pose.

    Each path step: find the route point LOOK_AHEAD beyond the closest one, with heading error a;
    speed = V_MAX * (0.25 + 0.75 free ahead / SCAN_MAX) * (0.6 + 0.4 max(cos a, 0)); move in the
    direction yaw + clip(a / 2, +-0.6) (a legged base sidesteps), then turn by clip(0.6 a, +-TURN_MAX).
    Stops at the route's end. Pure pursuit, hand-written: a dozen lines, no library models this robot.
    """
    route, arc = _route(poses)
    if len(route) < 2:
        return poses[:1].copy()
    seg, seg_len = np.diff(route, axis=0), np.diff(arc)
    x, y, yaw = (float(v) for v in poses[0])
    out, done = [(x, y, yaw)], 0.0
    for _ in range(max_steps):
        t = np.clip(((np.array([x, y]) - route[:-1]) * seg).sum(1) / seg_len**2, 0.0, 1.0)
        i = int(np.linalg.norm(route[:-1] + seg * t[:, None] - [x, y], axis=1).argmin())
        done = max(done, arc[i] + t[i] * seg_len[i])  # never back along the route
        if arc[-1] - done < 0.15:
            break
        s = min(done + LOOK_AHEAD, arc[-1])
        j = min(int(np.searchsorted(arc, s, "right")) - 1, len(seg) - 1)
        tx, ty = route[j] + seg[j] * ((s - arc[j]) / seg_len[j])
        a = wrap(math.atan2(ty - y, tx - x) - yaw)
        v = V_MAX * (0.25 + 0.75 * _free_ahead(layout, x, y, yaw) / SCAN_MAX) * (0.6 + 0.4 * max(0.0, math.cos(a)))
        v = min(v, arc[-1] - done + 0.05)
        heading = yaw + max(-0.6, min(0.6, 0.5 * a))
        x, y = x + v * math.cos(heading), y + v * math.sin(heading)
        yaw = wrap(yaw + max(-TURN_MAX, min(TURN_MAX, 0.6 * a)))
        out.append((x, y, yaw))
    return np.array(out, np.float64)


def camera_params(cam: Camera = VAMOS_CAM) -> dict:
    """The demo camera as camera_params: OpenCV intrinsics (pixel centres at integers, hence - 0.5)."""
    k = [[cam.fx, 0.0, cam.cx - 0.5], [0.0, cam.fy, cam.cy - 0.5], [0.0, 0.0, 1.0]]
    return {"resolution": {"width": cam.width, "height": cam.height}, "K": k, "camera_height_m": cam.height_m}


def robot_frame(poses: np.ndarray) -> np.ndarray:
    """World poses [H, 3] (x, y, yaw) -> points [H, 3] in the first pose's frame (x fwd, y left, z = 0)."""
    x0, y0, yaw = poses[0]
    d = poses[:, :2] - [x0, y0]
    c, s = math.cos(yaw), math.sin(yaw)
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], np.zeros(len(d))], 1)


def projection(points: np.ndarray, cam: Camera = VAMOS_CAM) -> np.ndarray:
    """Robot-frame points [H, 3] -> int64 pixels [H, 2] through the level demo camera; [-1, -1]
    for points not in front of it (as the VAMOS deployment projector marks them)."""
    k = np.asarray(camera_params(cam)["K"])
    out = np.full((len(points), 2), -1, np.int64)
    ahead = points[:, 0] > 1e-6
    p = points[ahead]
    out[ahead, 0] = np.round(k[0, 0] * -p[:, 1] / p[:, 0] + k[0, 2]).astype(np.int64)
    out[ahead, 1] = np.round(k[1, 1] * (cam.height_m - p[:, 2]) / p[:, 0] + k[1, 2]).astype(np.int64)
    return out


def episode_rows(seed: int, split: str, index: int, n: int) -> list[dict]:
    """Up to ``n`` rows from demo episode ``index`` of ``split``, timesteps spread along it."""
    layout, traj = make_episode(seed, split, index)
    poses = drive_route(layout, traj.poses)
    rng = np.random.default_rng([seed, 5, SPLITS[split], index])
    usable = [t for t in range(len(poses) - HORIZON + 1) if _goal_in_view(robot_frame(poses[t : t + HORIZON]))]
    picked = sorted(rng.choice(usable, size=min(n, len(usable)), replace=False).tolist()) if usable else []
    rows = []
    for t in picked:
        pts = robot_frame(poses[t : t + HORIZON])
        uv = projection(pts)
        frame = render(layout, poses[t], VAMOS_CAM)
        ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"encoding the VAMOS frame of {split}/{index}/{t} failed")
        gx, gy = (int(v) for v in uv[-1])
        loc = [min(1023, max(0, int(gx / VAMOS_CAM.width * 1024))), min(1023, max(0, int(gy / VAMOS_CAM.height * 1024)))]
        rows.append({
            "image": {"bytes": jpg.tobytes(), "path": None},
            "trajectory_3d": np.round(pts, 6).tolist(),
            "trajectory_2d": uv.tolist(),
            "camera_params": json.dumps(camera_params()),
            "lang_goal": f"Navigate to <point x={gx} y={gy}>goal</point>",
            "text": f"Navigate to x=<loc{loc[0]:04d}>, y=<loc{loc[1]:04d}>",
            "goal_2d": [gx, gy],
            "horizon": len(pts),
        })
    return rows


def _goal_in_view(pts: np.ndarray) -> bool:
    """The path's last point is MIN_AHEAD_M ahead or more and projects inside the image."""
    gx, gy = projection(pts[-1:])[0]
    return bool(pts[-1, 0] >= MIN_AHEAD_M and 0 <= gx < VAMOS_CAM.width and 0 <= gy < VAMOS_CAM.height)


def sample_jobs(seed: int, split: str, scale: float) -> list[tuple[str, int, int]]:
    """(split, episode index, samples) per episode so that the split gets its sample count."""
    want = max(1, int(round(SAMPLES[split] * scale)))
    return [(split, i, min(SAMPLES_PER_EPISODE, want - i * SAMPLES_PER_EPISODE))
            for i in range(math.ceil(want / SAMPLES_PER_EPISODE))]


def write_shards(root: Path, split: str, rows: list[dict], scale: float = 1.0) -> list[Path]:
    """Write ``rows`` into ``root/data/<split>-XXXXX-of-YYYYY.parquet`` (the VAMOS shard names)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = max(1, min(len(rows), int(round(SHARDS[split] * max(scale, 1.0)))))
    folder = Path(root) / "data"
    folder.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("trajectory_3d", pa.list_(pa.list_(pa.float64()))), ("trajectory_2d", pa.list_(pa.list_(pa.int64()))),
        ("camera_params", pa.string()), ("lang_goal", pa.string()), ("text", pa.string()),
        ("goal_2d", pa.list_(pa.int64())), ("horizon", pa.int64()),
    ])
    paths = []
    for k, chunk in enumerate(np.array_split(np.arange(len(rows)), n)):
        table = pa.Table.from_pylist([rows[i] for i in chunk], schema=schema)
        path = folder / f"{SHARD_SPLIT[split]}-{k:05d}-of-{n:05d}.parquet"
        pq.write_table(table, path, row_group_size=ROW_GROUP)
        paths.append(path)
    return paths
