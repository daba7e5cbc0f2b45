"""NaVILA / VLN-CE episodes on disk: JPEG frames, 16-bit depth, intrinsics, annotation records.

Layout under ``<out>/navila/``::

    {split}/{episode_id}/frame_{k:03d}.jpg   RGB frame k (JPEG quality 90)
    {split}/{episode_id}/depth_{k:03d}.png   z-depth of frame k, uint16 millimetres
    {split}/{episode_id}/intrinsics.json     fx, fy, cx, cy, width, height, hfov_deg, camera_height_m
    annotations_{split}.json                 [{"video_id", "frames", "q", "a"}, ...]
    poses_{split}.json                       {video_id: [[x, y, yaw], ...]} one per listed frame

A record ``"{episode_id}-{t}"`` is the episode's prefix up to timestep t (frames 0..t) and its
answer is what the agent does next, as NaVILA's exporters write them.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from .agent import Trajectory, navila_episode
from .render import Camera, render
from .world import SPLITS, Layout, make_layout

NAVILA_CAM = Camera(height_m=0.9)
JPEG_QUALITY = 90
MAX_MERGE = 3  # NaVILA's largest answers are 75 cm and 45 degrees


def answer(actions: tuple[str, ...], t: int) -> tuple[str, int]:
    """NaVILA's answer text at timestep t and how many primitives it covers (0 for "stop")."""
    if t >= len(actions):
        return "stop", 0
    n = 1
    while n < MAX_MERGE and t + n < len(actions) and actions[t + n] == actions[t]:
        n += 1
    if actions[t] == "forward":
        return f"move forward {25 * n} cm", n
    return f"turn {actions[t]} {15 * n} degree", n


def sample_steps(n_frames: int, rng: np.random.Generator) -> list[int]:
    """Timesteps to emit: 8-12 at a near-even stride, the first before t=7 (exercises NaVILA's
    front padding of short histories) and the last at the final frame (answer "stop")."""
    k = int(rng.integers(8, 13))
    first = int(rng.integers(1, 6))
    return sorted({int(round(t)) for t in np.linspace(first, n_frames - 1, k)})


def make_episode(seed: int, split: str, index: int) -> tuple[Layout, Trajectory]:
    """The deterministic episode ``index`` of ``split``: its layout and trajectory."""
    rng = np.random.default_rng([seed, 0, SPLITS[split], index, 7])
    for variant in range(20):  # a layout that admits no 25-60 frame episode is rare; take the next
        layout = make_layout(seed, "navila", split, index, variant)
        traj = navila_episode(layout, rng)
        if traj is not None:
            return layout, traj
    raise RuntimeError(f"no NaVILA episode fits layouts of {split}/{index}")


def episode_id(index: int) -> str:
    return f"ep{index:04d}"


def write_episode(root: Path, seed: int, split: str, index: int) -> tuple[list[dict], dict[str, list]]:
    """Render and write episode ``index``; return its annotation records and pose lists."""
    layout, traj = make_episode(seed, split, index)
    eid = episode_id(index)
    ep_dir = root / split / eid
    ep_dir.mkdir(parents=True, exist_ok=True)
    for k, pose in enumerate(traj.poses):
        frame = render(layout, pose, NAVILA_CAM)
        ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        ok2, png = cv2.imencode(".png", np.clip(np.round(frame.depth * 1000.0), 0, 65535).astype(np.uint16))
        if not (ok and ok2):
            raise RuntimeError(f"encoding frame {k} of {split}/{eid} failed")
        (ep_dir / f"frame_{k:03d}.jpg").write_bytes(jpg.tobytes())
        (ep_dir / f"depth_{k:03d}.png").write_bytes(png.tobytes())
    (ep_dir / "intrinsics.json").write_text(json.dumps(NAVILA_CAM.intrinsics(), indent=1))
    return episode_records(seed, split, index, traj)


def trajectory_records(seed: int, split: str, index: int) -> tuple[list[dict], dict[str, list]]:
    """Episode ``index``'s records and pose lists, exactly as ``write_episode`` returns them, without
    rendering: the frames they list are not written (a pixel-free demo for the poses stage)."""
    return episode_records(seed, split, index, make_episode(seed, split, index)[1])


def episode_records(seed: int, split: str, index: int, traj: Trajectory) -> tuple[list[dict], dict[str, list]]:
    """NaVILA records ``{video_id, frames, q, a}`` of the sampled prefixes and their pose lists [t + 1, 3]."""
    eid = episode_id(index)
    rng = np.random.default_rng([seed, 0, SPLITS[split], index, 8])
    records, poses = [], {}
    for t in sample_steps(len(traj.poses), rng):
        vid = f"{eid}-{t}"
        records.append({"video_id": vid, "frames": [f"{eid}/frame_{k:03d}.jpg" for k in range(t + 1)],
                        "q": traj.instruction, "a": answer(traj.actions, t)[0]})
        poses[vid] = [[round(float(v), 6) for v in p] for p in traj.poses[: t + 1]]
    return records, poses


def write_index(root: Path, split: str, parts: list[tuple[list[dict], dict[str, list]]]) -> None:
    """Write annotations_{split}.json and poses_{split}.json from per-episode parts (in order)."""
    records = [r for recs, _ in parts for r in recs]
    poses = {k: v for _, ps in parts for k, v in ps.items()}
    (root / f"annotations_{split}.json").write_text(json.dumps(records, indent=1))
    (root / f"poses_{split}.json").write_text(json.dumps(poses))
