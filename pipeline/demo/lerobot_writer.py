"""A LeRobot-format demo dataset from the demo world: an agent walks from one room to another.

Each episode is a walk planned through a demo layout (``agent.plan``, followed by
``video_writer.follow``) at 10 fps, seen by two cameras riding on the agent:
``observation.images.image`` looks ahead, ``observation.images.image2`` to the left. The action
is the agent's velocity to the next frame in its own frame, ``[forward m/s, left m/s, yaw rad/s]``
(zero on the last frame), so it is what the next pair of images shows as ego-motion; the state is
``[x, y, cos yaw, sin yaw, forward, left, yaw rate]`` with the velocities of the step just taken.
The task string names the goal room by its contents ("Walk to the room with the boxes.").

Layouts, as LeRobot (huggingface/lerobot ``datasets/utils.py``) writes and reads them:

    v3.0   meta/info.json, meta/stats.json, meta/tasks.parquet (task_index + the task as the
           pandas index), meta/episodes/chunk-000/file-000.parquet (one row per episode:
           dataset_from_index/to_index, data/chunk_index, data/file_index, and per camera
           videos/<key>/chunk_index, file_index, from_timestamp, to_timestamp),
           data/chunk-000/file-XXX.parquet and videos/<key>/chunk-000/file-XXX.mp4 holding
           ``EPISODES_PER_FILE`` episodes each, one after the other.
    v2.1   meta/info.json, meta/episodes.jsonl, meta/tasks.jsonl, meta/episodes_stats.jsonl,
           data/chunk-000/episode_XXXXXX.parquet, videos/chunk-000/<key>/episode_XXXXXX.mp4.

Video codec: AV1 (``libsvtav1``, LeRobot's default, crf 30, preset 12, GOP 2 as LeRobot encodes)
when the installed PyAV can encode it, else H.264 (``libx264``); ``info.json`` names the codec.
Splits go in ``info.json["splits"]`` as LeRobot's ``"first:end"`` episode ranges (train, then val).
Default size: 8 episodes of 20-48 frames at 64x64, written in about a second.
"""
from __future__ import annotations

import json
import math
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .agent import _free_point, plan
from .render import Camera, render
from .video_writer import follow
from .world import PURPOSES, SPLITS, make_layout

__all__ = ["write_lerobot_dataset", "pick_codec", "make_walk", "CAMERAS", "FPS", "EPISODES"]

FPS = 10
CAMERAS = {"observation.images.image": 0.0, "observation.images.image2": math.pi / 2}  # key: yaw offset
LR_CAM = Camera(width=64, height=64, hfov_deg=90.0, height_m=0.9)
EPISODES = {"train": 6, "val": 2}
EPISODES_PER_FILE = 3
MIN_FRAMES, MAX_FRAMES = 20, 48
STATE_NAMES = ("x", "y", "cos_yaw", "sin_yaw", "forward", "left", "yaw_rate")
ACTION_NAMES = ("forward", "left", "yaw_rate")
PURPOSE = "lerobot"


def pick_codec() -> str:
    """``libsvtav1`` when this PyAV build can encode AV1 with it, else ``libx264``."""
    for name in ("libsvtav1", "libx264"):
        try:
            av.codec.Codec(name, "w")
            return name
        except (av.FFmpegError, ValueError):
            continue
    raise RuntimeError("PyAV can encode neither AV1 (libsvtav1) nor H.264 (libx264)")


def make_walk(seed: int, split: str, index: int):
    """(layout, poses float64 [n, 3] (x, y, yaw), task) of walk ``index``: room A to room B."""
    rng = np.random.default_rng([seed, PURPOSES[PURPOSE], SPLITS[split], index])
    for variant in range(40):
        layout = make_layout(seed, PURPOSE, split, index, variant)
        a, b = (int(r) for r in rng.choice([r.rid for r in layout.rooms], size=2, replace=False))
        start, goal = _free_point(layout, rng, a), _free_point(layout, rng, b)
        path = None if start is None or goal is None else plan(layout, start, goal)
        if path is None:
            continue
        poses = follow(path, rng.uniform(-math.pi, math.pi), 0.3, MAX_FRAMES)
        if poses is not None and len(poses) >= MIN_FRAMES:
            return layout, poses, f"Walk to {layout.room_desc(b)}."
    raise RuntimeError(f"no walk of {MIN_FRAMES}-{MAX_FRAMES} frames fits the layouts of {split}/{index}")


def state_action(poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """poses [n, 3] -> state float32 [n, 7], action float32 [n, 3] (see the module docstring)."""
    x, y, yaw = poses[:, 0], poses[:, 1], poses[:, 2]
    d = np.diff(poses[:, :2], axis=0)
    c, s = np.cos(yaw[:-1]), np.sin(yaw[:-1])
    dyaw = (np.diff(yaw) + math.pi) % (2 * math.pi) - math.pi
    vel = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], dyaw], 1) * FPS  # [n-1, 3]
    action = np.concatenate([vel, np.zeros((1, 3))])
    state = np.concatenate([np.stack([x, y, np.cos(yaw), np.sin(yaw)], 1), np.concatenate([np.zeros((1, 3)), vel])], 1)
    return state.astype(np.float32), action.astype(np.float32)


def encode_video(path: Path, frames: np.ndarray, codec: str) -> None:
    """frames uint8 [N, H, W, 3] RGB -> an mp4 at FPS, frame k at pts k (time base 1/FPS)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # SVT-AV1 prints its whole configuration to stderr at every encoder start; errors only
    os.environ.setdefault("SVT_LOG", "1")
    with av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream(codec, rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.thread_count = 1  # one thread: the same bytes on every run
        opts = {"g": "2", "crf": "30"}
        stream.options = {**opts, "preset": "12", "svtav1-params": "lp=1"} if codec == "libsvtav1" else opts
        for k, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = k
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _frame_table(eps: list[dict], start_index: int) -> pa.Table:
    state = np.concatenate([e["state"] for e in eps])
    action = np.concatenate([e["action"] for e in eps])
    n = len(state)
    fixed = lambda a: pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1])  # noqa: E731
    return pa.table({
        "observation.state": fixed(state), "action": fixed(action),
        "timestamp": pa.array(np.concatenate([np.arange(e["n"]) / FPS for e in eps]).astype(np.float32)),
        "frame_index": pa.array(np.concatenate([np.arange(e["n"]) for e in eps]).astype(np.int64)),
        "episode_index": pa.array(np.concatenate([np.full(e["n"], e["index"]) for e in eps]).astype(np.int64)),
        "index": pa.array(np.arange(start_index, start_index + n, dtype=np.int64)),
        "task_index": pa.array(np.concatenate([np.full(e["n"], e["task_index"]) for e in eps]).astype(np.int64)),
    })


def _stats(values: np.ndarray) -> dict:
    """LeRobot's per-feature stats over axis 0 (min, max, mean, std, count, q01..q99)."""
    v = values.astype(np.float64)
    out = {"min": v.min(0), "max": v.max(0), "mean": v.mean(0), "std": v.std(0), "count": np.array([len(v)])}
    out.update({f"q{q:02d}": np.quantile(v, q / 100, axis=0) for q in (1, 10, 50, 90, 99)})
    return {k: np.asarray(x).tolist() for k, x in out.items()}


def _all_stats(eps: list[dict]) -> dict:
    stats = {"observation.state": _stats(np.concatenate([e["state"] for e in eps])),
             "action": _stats(np.concatenate([e["action"] for e in eps]))}
    for key in CAMERAS:  # per channel, [3, 1, 1], pixels scaled to [0, 1] as LeRobot's image stats
        px = np.concatenate([e["pixels"][key].reshape(-1, 3) for e in eps]) / 255.0
        stats[key] = {k: (np.asarray(v)[:, None, None].tolist() if k != "count" else [len(px)])
                      for k, v in _stats(px).items()}
    return stats


def _features(codec: str) -> dict:
    vinfo = {"video.height": LR_CAM.height, "video.width": LR_CAM.width, "video.codec": "av1" if codec == "libsvtav1" else "h264",
             "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": FPS, "video.channels": 3, "has_audio": False}
    feats = {k: {"dtype": "video", "shape": [LR_CAM.height, LR_CAM.width, 3], "names": ["height", "width", "channels"], "info": vinfo}
             for k in CAMERAS}
    feats["observation.state"] = {"dtype": "float32", "shape": [len(STATE_NAMES)], "names": list(STATE_NAMES)}
    feats["action"] = {"dtype": "float32", "shape": [len(ACTION_NAMES)], "names": list(ACTION_NAMES)}
    for k, dt in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"), ("index", "int64"), ("task_index", "int64")):
        feats[k] = {"dtype": dt, "shape": [1], "names": None}
    return feats


def _episodes(seed: int, scale: float) -> tuple[list[dict], list[str], dict[str, str]]:
    eps, tasks, splits = [], [], {}
    for split in ("train", "val"):
        first = len(eps)
        for i in range(max(1, int(round(EPISODES[split] * scale)))):
            layout, poses, task = make_walk(seed, split, i)
            state, action = state_action(poses)
            pixels = {key: np.stack([render(layout, (x, y, yaw + off), LR_CAM).rgb for x, y, yaw in poses]) for key, off in CAMERAS.items()}
            if task not in tasks:
                tasks.append(task)
            eps.append({"index": len(eps), "n": len(poses), "state": state, "action": action, "pixels": pixels,
                        "task": task, "task_index": tasks.index(task)})
        splits[split] = f"{first}:{len(eps)}"
    return eps, tasks, splits


def _info(version: str, eps: list[dict], tasks: list[str], splits: dict, codec: str) -> dict:
    info = {"codebase_version": version, "robot_type": "navcache_demo_walker", "total_episodes": len(eps),
            "total_frames": sum(e["n"] for e in eps), "total_tasks": len(tasks), "chunks_size": 1000, "fps": FPS,
            "splits": splits, "features": _features(codec)}
    if version == "v3.0":
        info.update(data_files_size_in_mb=100, video_files_size_in_mb=200,
                    data_path="data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                    video_path="videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4")
    else:
        info.update(total_chunks=1, total_videos=len(eps) * len(CAMERAS),
                    data_path="data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
                    video_path="videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4")
    return info


def _tasks_table(tasks: list[str]) -> pa.Table:
    """task_index with the task text as the pandas index (what ``pandas.read_parquet`` gives LeRobot)."""
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "__index_level_0__": pa.array(tasks, pa.large_string())})
    pandas_meta = {"index_columns": ["__index_level_0__"], "column_indexes": [], "columns": [
        {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
        {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object", "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def _write_v30(root: Path, eps: list[dict], tasks: list[str], codec: str) -> None:
    rows = []
    for f, first in enumerate(range(0, len(eps), EPISODES_PER_FILE)):
        group = eps[first:first + EPISODES_PER_FILE]
        start = sum(e["n"] for e in eps[:first])
        (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(_frame_table(group, start), root / f"data/chunk-000/file-{f:03d}.parquet")
        for key in CAMERAS:
            encode_video(root / f"videos/{key}/chunk-000/file-{f:03d}.mp4", np.concatenate([e["pixels"][key] for e in group]), codec)
        t = 0
        for e in group:
            row = {"episode_index": e["index"], "tasks": [e["task"]], "length": e["n"], "data/chunk_index": 0, "data/file_index": f,
                   "dataset_from_index": start, "dataset_to_index": start + e["n"]}
            for key in CAMERAS:
                row.update({f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": f,
                            f"videos/{key}/from_timestamp": t / FPS, f"videos/{key}/to_timestamp": (t + e["n"]) / FPS})
            rows.append({**row, "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
            start, t = start + e["n"], t + e["n"]
    (root / "meta/episodes/chunk-000").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(_tasks_table(tasks), root / "meta/tasks.parquet")


def _write_v21(root: Path, eps: list[dict], tasks: list[str], codec: str) -> None:
    (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
    start = 0
    for e in eps:
        pq.write_table(_frame_table([e], start), root / f"data/chunk-000/episode_{e['index']:06d}.parquet")
        for key in CAMERAS:
            encode_video(root / f"videos/chunk-000/{key}/episode_{e['index']:06d}.mp4", e["pixels"][key], codec)
        start += e["n"]
    lines = lambda objs: "".join(json.dumps(o) + "\n" for o in objs)  # noqa: E731
    (root / "meta/episodes.jsonl").write_text(lines({"episode_index": e["index"], "tasks": [e["task"]], "length": e["n"]} for e in eps))
    (root / "meta/tasks.jsonl").write_text(lines({"task_index": i, "task": t} for i, t in enumerate(tasks)))
    (root / "meta/episodes_stats.jsonl").write_text(lines({"episode_index": e["index"], "stats": _all_stats([e])} for e in eps))


def write_lerobot_dataset(root: Path, version: str = "v3.0", seed: int = 0, scale: float = 1.0, codec: str | None = None) -> dict:
    """Write the demo walks as a LeRobot dataset of ``version`` ("v3.0" or "v2.1") under ``root``
    (which must not exist yet or be empty). Deterministic in (seed, scale, codec). Returns
    {"episodes", "frames", "tasks", "codec", "splits"}."""
    if version not in ("v3.0", "v2.1"):
        raise ValueError(f"version must be 'v3.0' or 'v2.1', got {version!r}")
    root = Path(root)
    codec = codec or pick_codec()
    eps, tasks, splits = _episodes(seed, scale)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (_write_v30 if version == "v3.0" else _write_v21)(root, eps, tasks, codec)
    if version == "v3.0":
        (root / "meta/stats.json").write_text(json.dumps(_all_stats(eps), indent=1))
    (root / "meta/info.json").write_text(json.dumps(_info(version, eps, tasks, splits, codec), indent=4))
    return {"episodes": len(eps), "frames": sum(e["n"] for e in eps), "tasks": len(tasks), "codec": codec, "splits": splits}
