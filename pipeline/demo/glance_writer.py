"""Demo "glances": short first-person clips for the heatmaps head (``demo_heatmaps``).

A glance is 16 frames in one layout: the camera turns in place (left or right, 50-230 degrees),
looks left then right (the seed's example: what frame 1 saw ahead lies to the side of frame 5),
turns about to look behind it, walks ahead, or walks while turning. Many short, varied clips
teach where one keyframe's content lies in another's view better than a few long tours: the
ordered keyframe pairs of a glance span every relative heading from "straight ahead" to "behind"
in small steps. Rendering is ~0.4 ms a frame, so the set is cheap; what a glance costs is its
extraction (decode, the tiny VGGT, DINOv3 on 8 keyframes).

Files per glance, under ``<root>/glances/{split}/`` (the ``videos`` source's layout, as tours)::

    glance_{index:04d}.mp4      16 frames, 128 x 128, mp4v, 10 fps (``video_writer.TOUR_CAM``)
    glance_{index:04d}.json     {"motion", "layout"}
    glance_{index:04d}.gt.npz   depth, extrinsics, intrinsics as ``video_writer.write_tour``
"""
from __future__ import annotations

import math

import numpy as np

from . import world
from .agent import AGENT_RADIUS, _free_point
from .video_writer import write_clip
from .world import SPLITS, make_layout

PURPOSE = "glances"
N_FRAMES = 16
#: motion kind -> share of the glances; turning kinds dominate, since turns move content across
#: the view and out of it, which is what the ring cells and the left/right bars are about
MOTIONS = {"turn": 0.3, "look": 0.25, "about": 0.1, "walk": 0.15, "arc": 0.2}

__all__ = ["MOTIONS", "N_FRAMES", "glance_id", "make_glance", "write_glance"]


def glance_id(index: int) -> str:
    return f"glance_{index:04d}"


def _yaw_rates(rng: np.random.Generator, motion: str, n: int) -> np.ndarray:
    """Per-frame heading change [n - 1] (radians; positive = counter-clockwise = to the left)."""
    side = 1.0 if rng.random() < 0.5 else -1.0
    if motion == "turn":
        return np.full(n - 1, side * math.radians(rng.uniform(3.5, 15)))
    if motion == "look":  # one way, then back past the start the other way
        w = math.radians(rng.uniform(6, 14))
        k = int(rng.integers(n // 3, 2 * n // 3))
        back = w * k / (n - 1 - k) * rng.uniform(1.6, 2.4)  # 60-140% past the start
        return np.concatenate([np.full(k, side * w), np.full(n - 1 - k, -side * back)])
    if motion == "about":
        return np.full(n - 1, side * math.pi * rng.uniform(1.0, 1.3) / (n - 1))
    if motion == "walk":
        return rng.normal(0, math.radians(2.5), n - 1)
    return np.full(n - 1, side * math.radians(rng.uniform(3, 9)))  # arc


def _poses(layout, rng: np.random.Generator, motion: str, n: int) -> np.ndarray | None:
    """float64 [n, 3] (x, y, yaw); None when no start point is free."""
    room = int(rng.choice([r.rid for r in layout.rooms]))
    start = _free_point(layout, rng, room)
    if start is None:
        return None
    speed = rng.uniform(0.06, 0.16) if motion in ("walk", "arc") else 0.0
    rates = _yaw_rates(rng, motion, n)
    xy, yaw = start.astype(np.float64), rng.uniform(-math.pi, math.pi)
    poses = [(*xy, yaw)]
    for w in rates:
        yaw = (yaw + w + math.pi) % (2 * math.pi) - math.pi
        ahead = xy + speed * np.array([math.cos(yaw), math.sin(yaw)])
        if speed and layout.clearance(ahead[None])[0] > AGENT_RADIUS + 0.05:
            xy = ahead  # blocked: stand and keep turning rather than walk into a wall
        poses.append((*xy, yaw))
    return np.array(poses, np.float64)


def make_glance(seed: int, split: str, index: int) -> tuple[world.Layout, np.ndarray, str]:
    """The deterministic glance ``index`` of ``split``: (layout, poses [N_FRAMES, 3], motion kind)."""
    rng = np.random.default_rng([seed, world.PURPOSES[PURPOSE], SPLITS[split], index, 13])
    motion = str(rng.choice(list(MOTIONS), p=list(MOTIONS.values())))
    for variant in range(20):
        layout = make_layout(seed, PURPOSE, split, index, variant)
        poses = _poses(layout, rng, motion, N_FRAMES)
        if poses is not None:
            return layout, poses, motion
    raise RuntimeError(f"no glance fits layouts of {split}/{index}")


def write_glance(root, seed: int, split: str, index: int) -> dict:
    """Render glance ``index`` of ``split`` into ``root/glances/{split}/``; returns its summary row."""
    layout, poses, motion = make_glance(seed, split, index)
    name = glance_id(index)
    write_clip(root, "glances", split, name, layout, poses, {"motion": motion, "layout": layout.name})
    return {"episode_id": name, "media": f"{split}/{name}.mp4", "n_frames": len(poses), "motion": motion}
