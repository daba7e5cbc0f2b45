"""VAMOS-format samples of the demo world: parquet shards named as the real dataset's.

Layout under ``<out>/vamos/``::

    data/train-00000-of-00002.parquet, data/train-00001-of-00002.parquet
    data/validation-00000-of-00001.parquet

One row per sample, taken at a timestep t of a NaVILA demo episode (``navila_writer.make_episode``):

    image            {bytes, path}: the first-person JPEG at pose t (the struct ``datasets.Image`` writes)
    trajectory_3d    [H, 3] metres, the agent's next path (poses t .. t+H-1) in the robot frame at t:
                     x forward, y left, z up, on the floor (z = 0); point 0 is the robot itself
    trajectory_2d    [H, 2] int pixels, the path's projection (the pinhole ``camera_params``, camera
                     level at ``camera_height_m``); [-1, -1] for points not in front of the camera
    camera_params    JSON {"resolution": {width, height}, "K": 3x3 (OpenCV pixel centres), "camera_height_m"}
    lang_goal        "Navigate to <point x=U y=V>goal</point>" at the last path point's pixel
    text             "Navigate to x=<locXXXX>, y=<locXXXX>" (the VAMOS prompt, 1024-step grid)
    goal_2d, horizon the last point's pixel; the number of points

Samples keep a goal at least ``MIN_AHEAD_M`` ahead, so the goal pixel lies in the image.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

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
    rng = np.random.default_rng([seed, 5, SPLITS[split], index])
    usable = [t for t in range(len(traj.poses) - 1)
              if robot_frame(traj.poses[t : t + HORIZON])[-1, 0] >= MIN_AHEAD_M]
    picked = sorted(rng.choice(usable, size=min(n, len(usable)), replace=False).tolist()) if usable else []
    rows = []
    for t in picked:
        pts = robot_frame(traj.poses[t : t + HORIZON])
        uv = projection(pts)
        frame = render(layout, traj.poses[t], VAMOS_CAM)
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
