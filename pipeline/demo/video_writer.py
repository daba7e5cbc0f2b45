"""Demo "tours" for the ``videos`` source: walk from a room to another room and back again.

A tour starts in room A, crosses to a point in room B, returns to another point in room A and
pans 180-300 degrees there, so the end of the video revisits what its beginning showed: the case
where space-aware keyframe selection beats uniform sampling. Files per tour, under ``<root>/videos/{split}/``::

    tour_{index:04d}.mp4      cv2.VideoWriter, fourcc mp4v, 10 fps, 60-160 frames, 128 x 128
    tour_{index:04d}.json     {"instruction", "rooms", "revisit_frame", "layout"}
    tour_{index:04d}.gt.npz   depth float16 [n, 128, 128] z-depth metres,
                              extrinsics float32 [n, 3, 4] OpenCV camera-from-world [R | t],
                              intrinsics float32 [3, 3] pixels, pixel centres at integer (u, v)

so ``VideosSource(<root>/videos)`` reads them with its default options.
"""
from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import world
from .agent import AGENT_RADIUS, _free_point, plan, wrap
from .render import Camera, render
from .world import CORRIDOR, SPLITS, Layout, make_layout

TOUR_CAM = Camera(height_m=0.9)  # NaVILA's camera
FPS = 10.0
MIN_FRAMES, MAX_FRAMES = 60, 160
MAX_TURN = math.radians(12)  # per frame: 120 degrees/s keeps consecutive views overlapping
WALK_ERR = math.radians(30)  # heading error above which the walker stops and turns in place
LOOKAHEAD_M = 0.6  # heading aims this far ahead on the path, so turns start before corners
PAN_TURN = math.radians(9)  # per frame, while looking around room A again at the end
PURPOSE = "videos"

__all__ = ["TOUR_CAM", "FPS", "Tour", "make_tour", "tour_id", "extrinsics", "intrinsics", "write_clip", "write_tour"]


@dataclass(frozen=True, eq=False)
class Tour:
    """poses: float64 [n, 3] (x, y, yaw); rooms: (A, B) room ids; revisit_frame: first frame
    back in A after the walk left it."""

    layout: Layout
    poses: np.ndarray
    rooms: tuple[int, int]
    revisit_frame: int
    instruction: str


def tour_id(index: int) -> str:
    return f"tour_{index:04d}"


def follow(path: np.ndarray, yaw0: float, step: float, max_frames: int = MAX_FRAMES) -> np.ndarray | None:
    """Walk the polyline ``path`` [K, 2] at ``step`` metres per frame from heading ``yaw0``.

    Positions stay exactly on the (planned, obstacle-free) polyline; the heading turns at most
    MAX_TURN per frame towards a point LOOKAHEAD_M ahead and the walker stands still while it is
    more than WALK_ERR off. Returns poses float64 [n, 3], or None past ``max_frames``.
    """
    cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    total = float(cum[-1])

    def at(s: float) -> np.ndarray:
        i = min(int(np.searchsorted(cum, s, side="right")) - 1, len(path) - 2)
        seg = cum[i + 1] - cum[i]
        return path[i] + (path[i + 1] - path[i]) * ((s - cum[i]) / seg if seg > 0 else 0.0)

    s, yaw = 0.0, float(yaw0)
    poses = [(*path[0], wrap(yaw))]
    while s < total - 1e-9:
        if len(poses) >= max_frames:
            return None
        here, ahead = at(s), at(min(s + LOOKAHEAD_M, total))
        err = wrap(math.atan2(ahead[1] - here[1], ahead[0] - here[0]) - yaw)
        yaw += float(np.clip(err, -MAX_TURN, MAX_TURN))
        if abs(err) <= WALK_ERR:
            s = min(s + step, total)
        poses.append((*at(s), wrap(yaw)))
    return np.array(poses, np.float64)


def _describe(layout: Layout, poses: np.ndarray, a: int, b: int) -> str:
    start, there = layout.room_desc(a), layout.room_desc(b)
    if there == start:  # two rooms that read alike: "another room with the box"
        there = "another " + there.removeprefix("the ")
    via = " down the corridor" if (layout.region_at(poses[:, :2]) == CORRIDOR).any() else ""
    return f"Start in {start}, walk{via} to {there}, then come back to the room where you started and look around it."


def _revisit(layout: Layout, poses: np.ndarray, a: int, b: int) -> int | None:
    """First frame back in room ``a`` after having been in room ``b``, if the tour ends in ``a``."""
    region = layout.region_at(poses[:, :2])
    if region[0] != a or region[-1] != a or not (region == b).any():
        return None
    after = np.nonzero(region[int(np.argmax(region == b)):] == a)[0]
    return int(np.argmax(region == b)) + int(after[0])


def make_tour(seed: int, split: str, index: int) -> Tour:
    """The deterministic tour ``index`` of ``split``: room A -> room B -> back to room A."""
    rng = np.random.default_rng([seed, world.PURPOSES[PURPOSE], SPLITS[split], index, 11])
    for variant in range(20):  # a layout where no tour fits 60-160 frames is rare; take the next
        layout = make_layout(seed, PURPOSE, split, index, variant)
        for _ in range(20):
            a, b = (int(r) for r in rng.choice([r.rid for r in layout.rooms], size=2, replace=False))
            start, via, back = (_free_point(layout, rng, r) for r in (a, b, a))
            if start is None or via is None or back is None:
                continue
            legs = [plan(layout, start, via), plan(layout, via, back)]
            if legs[0] is None or legs[1] is None:
                continue
            path = np.concatenate([legs[0], legs[1][1:]])
            length = float(np.linalg.norm(np.diff(path, axis=0), axis=1).sum())
            # the step sets the length: 60-100 walking frames, the turns and the pan add the rest
            step = float(np.clip(length / rng.uniform(60, 100), 0.06, 0.2))
            n_pan = int(rng.uniform(math.pi, 5 * math.pi / 3) / PAN_TURN)
            poses = follow(path, rng.uniform(-math.pi, math.pi), step, MAX_FRAMES - n_pan)
            if poses is None or len(poses) + n_pan < MIN_FRAMES:
                continue
            x, y, yaw = poses[-1]
            turn = PAN_TURN * (1 if rng.random() < 0.5 else -1) * np.arange(1, n_pan + 1)
            poses = np.concatenate([poses, np.stack([np.full(n_pan, x), np.full(n_pan, y),
                                                     (yaw + turn + math.pi) % (2 * math.pi) - math.pi], 1)])
            if (layout.clearance(poses[:, :2]) < AGENT_RADIUS).any():
                continue
            frame = _revisit(layout, poses, a, b)
            if frame is None:
                continue
            return Tour(layout, poses, (a, b), frame, _describe(layout, poses, a, b))
    raise RuntimeError(f"no tour fits layouts of {split}/{index}")


def extrinsics(poses: np.ndarray, cam: Camera = TOUR_CAM) -> np.ndarray:
    """OpenCV camera-from-world [R | t] of poses [n, 3] -> float64 [n, 3, 4].

    Rows of R are the camera axes in world coordinates: right (sin yaw, -cos yaw, 0), down
    (0, 0, -1), forward (cos yaw, sin yaw, 0); the centre is C = (x, y, cam.height_m), t = -R C.
    """
    x, y, yaw = (np.asarray(poses, np.float64)[:, i] for i in range(3))
    s, c, z = np.sin(yaw), np.cos(yaw), np.zeros_like(yaw)
    r = np.stack([np.stack([s, -c, z], -1), np.stack([z, z, z - 1], -1), np.stack([c, s, z], -1)], axis=1)
    centre = np.stack([x, y, np.full_like(x, cam.height_m)], -1)
    return np.concatenate([r, -(r @ centre[:, :, None])], axis=2)


def intrinsics(cam: Camera = TOUR_CAM) -> np.ndarray:
    """float64 [3, 3] pixel intrinsics in OpenCV's convention (pixel (u, v) centred at integers).

    The renderer casts rays through pixel centres u + 0.5 around cx = W / 2, so OpenCV's
    principal point is half a pixel less: (W - 1) / 2.
    """
    return np.array([[cam.fx, 0.0, cam.cx - 0.5], [0.0, cam.fy, cam.cy - 0.5], [0.0, 0.0, 1.0]])


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with a fixed member timestamp.

    savez stamps every member with the current time, so two runs would differ in bytes; the demo
    promises byte-identical files. Same archive layout and compression otherwise, read by np.load.
    """
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)


def write_clip(root: Path, folder_name: str, split: str, name: str, layout: Layout, poses: np.ndarray, meta: dict) -> None:
    """Render ``poses`` [n, 3] in ``layout`` to ``root/folder_name/split/name.{mp4,gt.npz,json}``."""
    folder = Path(root) / folder_name / split
    folder.mkdir(parents=True, exist_ok=True)
    n = len(poses)
    depth = np.empty((n, TOUR_CAM.height, TOUR_CAM.width), np.float16)
    out = cv2.VideoWriter(str(folder / f"{name}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (TOUR_CAM.width, TOUR_CAM.height))
    if not out.isOpened():
        raise RuntimeError("OpenCV cannot write mp4v video (no FFmpeg backend?)")
    for k, pose in enumerate(poses):
        frame = render(layout, pose, TOUR_CAM)
        out.write(cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
        # the plan is closed, so every pixel hits a surface; 0 would mark a pixel without depth
        depth[k] = np.where(np.isfinite(frame.depth), frame.depth, 0.0)
    out.release()
    save_npz(folder / f"{name}.gt.npz", {"depth": depth, "extrinsics": extrinsics(poses).astype(np.float32),
                                          "intrinsics": intrinsics().astype(np.float32)})
    (folder / f"{name}.json").write_text(json.dumps(meta, indent=1))


def write_tour(root: Path, seed: int, split: str, index: int) -> dict:
    """Render tour ``index`` of ``split`` into ``root/videos/{split}/`` and return its summary row."""
    tour = make_tour(seed, split, index)
    name = tour_id(index)
    a, b = tour.rooms
    meta = {"instruction": tour.instruction, "rooms": [a, b, a], "revisit_frame": tour.revisit_frame,
            "layout": tour.layout.name}
    write_clip(root, "videos", split, name, tour.layout, tour.poses, meta)
    return {"episode_id": name, "media": f"{split}/{name}.mp4", "n_frames": len(tour.poses),
            "fps": FPS, "rooms": [a, b, a], "revisit_frame": tour.revisit_frame}
