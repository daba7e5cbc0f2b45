"""Rover clips for the SIM safety heads: scene sampling, mp4 rendering, the parquet index.

Each clip is the rover driving at constant (v, w) for 16 frames (1.5 s at 10 fps) into a sampled
scene; its labels come from ``labels.rover_labels`` applied to the last frame and the recorded
telemetry. The sampler cycles through scenario kinds and keeps proposing scenes until the rule's
output matches the kind (or gives up and keeps the last valid scene), which balances the classes
without ever writing a label the rule would not give.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from navcache.cache_specs.labels import RISK, TELEMETRY_FIELDS

from .agent import arc_poses
from .labels import observe, rover_labels
from .render import Camera, cast_columns, render
from .world import CELL, CORRIDOR, SPLITS, Layout, make_layout

FPS = 10.0
N_FRAMES = 16
ROVER_CAM = Camera(height_m=0.5)
ROVER_RADIUS = 0.2
G = 9.81
SCENARIOS = ("open", "human_low", "human_medium", "human_high", "obstacle_low", "obstacle_medium",
             "obstacle_high_left", "obstacle_high_right", "close", "tight", "dark", "fog")
TTC_RANGES = {"low": (4.3, 6.7), "medium": (2.2, 3.8), "high": (0.7, 1.9)}  # inside the rule's buckets
SCHEMA = pa.schema([("clip_id", pa.string()), ("video", pa.string()), ("fps", pa.float64()),
                    ("n_frames", pa.int64()), ("telemetry", pa.list_(pa.float32())), ("risk", pa.string()),
                    ("reason", pa.string()), ("action", pa.string()), ("weight", pa.float32())])


@dataclass(frozen=True, eq=False)
class RoverScene:
    """poses: float64 [N_FRAMES, 3]; telemetry: float32 [8] in TELEMETRY_FIELDS order (end of clip)."""

    clip_id: str
    scenario: str
    layout: Layout
    poses: np.ndarray
    light: float
    fog_m: float
    telemetry: np.ndarray
    risk: str
    reason: str
    action: str


def _wanted(scenario: str, labels: tuple[str, str, str]) -> bool:
    risk, reason, action = labels
    if scenario == "open":
        return risk == "none"
    if scenario == "close":
        return action == "reverse"
    if scenario == "tight":
        return reason == "tight_space"
    if scenario in ("dark", "fog"):
        return reason == "unknown"
    kind, level, *side = scenario.split("_")
    return (reason, risk) == (kind, level) and action != "reverse" and (not side or action == f"turn_{side[0]}")


def _room_pose(layout: Layout, rng: np.random.Generator) -> tuple[float, float, float]:
    x0, y0, x1, y1 = layout.rooms[int(rng.integers(len(layout.rooms)))].bounds_m()
    return rng.uniform(x0 + 0.3, x1 - 0.3), rng.uniform(y0 + 0.3, y1 - 0.3), rng.uniform(-math.pi, math.pi)


def _corridor_pose(layout: Layout, rng: np.random.Generator) -> tuple[float, float, float] | None:
    """A pose on a corridor's centre line, heading along it."""
    cells = np.argwhere(layout.grid == CORRIDOR)
    if not len(cells):
        return None
    r, c = cells[int(rng.integers(len(cells)))]
    free = layout.grid > 0

    def run(line: np.ndarray, i: int) -> tuple[int, int]:
        lo = hi = i
        while line[lo - 1]:
            lo -= 1
        while line[hi + 1]:
            hi += 1
        return lo, hi

    (c0, c1), (r0, r1) = run(free[r], c), run(free[:, c], r)
    along_x = c1 - c0 >= r1 - r0  # the corridor runs along its longer free extent
    # centre across the corridor, midway between the walls on either side
    x, y = ((c + 0.5) * CELL, (r0 + r1 + 1) / 2 * CELL) if along_x else ((c0 + c1 + 1) / 2 * CELL, (r + 0.5) * CELL)
    yaw = (0.0 if along_x else math.pi / 2) + (math.pi if rng.random() < 0.5 else 0.0) + rng.uniform(-0.06, 0.06)
    return x, y, yaw


def _object_pose(layout: Layout, rng: np.random.Generator, kind: str, dist: float) -> tuple[float, float, float] | None:
    """A pose ``dist`` metres short of a box or person surface, facing it."""
    items = layout.persons if kind == "person" else layout.boxes
    if not len(items):
        return None
    j = int(rng.integers(len(items)))
    phi = rng.uniform(-math.pi, math.pi)
    u = np.array([math.cos(phi), math.sin(phi)])
    if kind == "person":
        centre, reach = items[j, 0:2], items[j, 2]
    else:  # distance from the box centre to its boundary along -u
        centre, half = (items[j, 0:2] + items[j, 2:4]) / 2, (items[j, 2:4] - items[j, 0:2]) / 2
        reach = min(half[0] / max(abs(u[0]), 1e-9), half[1] / max(abs(u[1]), 1e-9))
    x, y = centre - (dist + reach) * u
    return x, y, phi + rng.uniform(-0.1, 0.1)


def _propose(layout: Layout, scenario: str, rng: np.random.Generator):
    """(end pose, v, w, light, fog_m) for one candidate scene of ``scenario``, or None."""
    light = rng.uniform(0.75, 1.1)
    fog = rng.uniform(6.0, 15.0) if rng.random() < 0.2 else math.inf
    w = rng.uniform(-0.25, 0.25)
    v = rng.uniform(0.1, 1.2)
    if scenario.startswith(("human", "obstacle")):
        # distance first (rooms are small), then the speed that gives the wanted time to contact
        ttc = rng.uniform(*TTC_RANGES[scenario.split("_")[1]])
        dist = rng.uniform(max(0.55, 0.1 * ttc), min(3.5, 1.2 * ttc))
        v = dist / ttc
        pose = _object_pose(layout, rng, "person" if scenario.startswith("human") else "box", dist)
    elif scenario == "close":
        v = rng.uniform(0.05, 0.8)
        pose = _object_pose(layout, rng, "person" if rng.random() < 0.5 else "box", rng.uniform(0.24, 0.42))
    elif scenario == "tight":
        w = rng.uniform(-0.04, 0.04)
        pose = _corridor_pose(layout, rng)
    elif scenario == "open":
        v = rng.uniform(0.1, 0.5)
        pose = _room_pose(layout, rng)
    else:  # dark / fog, anywhere; half of them facing something
        if scenario == "dark":
            light = rng.uniform(0.06, 0.2)
        else:
            fog = rng.uniform(0.5, 1.2)
        pose = (_object_pose(layout, rng, "person" if rng.random() < 0.5 else "box", rng.uniform(0.5, 3.0))
                if rng.random() < 0.5 else _room_pose(layout, rng))
    return None if pose is None else (pose, v, w, light, fog)


def _telemetry(rng: np.random.Generator, v: float, w: float) -> np.ndarray:
    """float32 [8] in TELEMETRY_FIELDS order for steady driving at (v, w), with sensor noise."""
    clean = {"ax": 0.0, "ay": v * w, "az": G, "gx": 0.0, "gy": 0.0, "gz": w, "v": v, "w": w}
    noise = rng.normal(0.0, [0.05 if f in ("ax", "ay", "az") else 0.01 for f in TELEMETRY_FIELDS])
    tele = np.array([clean[f] for f in TELEMETRY_FIELDS]) + noise
    tele[TELEMETRY_FIELDS.index("v")] = max(tele[TELEMETRY_FIELDS.index("v")], 0.0)  # odometry never reads < 0
    return tele.astype(np.float32)


def sample_scene(seed: int, split: str, index: int) -> RoverScene:
    """The deterministic scene of clip ``index`` of ``split`` (labels included)."""
    scenario = SCENARIOS[index % len(SCENARIOS)]
    rng = np.random.default_rng([seed, 1, SPLITS[split], index, 9])
    last = None
    for variant in range(8):
        # 1 m corridors only: a rover corridor scene is meant to be a tight one
        layout = make_layout(seed, "rover", split, index, variant, corridor=(2, 2), n_boxes=(2, 5), n_persons=(1, 3))
        for _ in range(30):
            prop = _propose(layout, scenario, rng)
            if prop is None:
                break  # this layout lacks what the scenario needs
            end, v, w, light, fog = prop
            poses = arc_poses(end, v, w, N_FRAMES, FPS)
            if (layout.clearance(poses[:, :2]) < ROVER_RADIUS).any():
                continue
            tele = _telemetry(rng, v, w)
            obs = observe(cast_columns(layout, poses[-1], ROVER_CAM), ROVER_CAM, light, fog)
            labels = rover_labels(obs, float(tele[TELEMETRY_FIELDS.index("v")]))  # the rule sees the recorded v
            last = RoverScene(clip_id(index), scenario, layout, poses, light, fog, tele, *labels)
            if _wanted(scenario, labels):
                return last
    if last is None:
        raise RuntimeError(f"no valid rover scene for {split}/{index}")
    return last


def clip_id(index: int) -> str:
    return f"clip{index:05d}"


def write_clips(root: Path, seed: int, split: str, indices: range) -> list[dict]:
    """``write_clip`` for a batch of clips (one pool task, fewer round trips)."""
    return [write_clip(root, seed, split, i) for i in indices]


def write_clip(root: Path, seed: int, split: str, index: int) -> dict:
    """Render clip ``index`` to ``videos/{split}/{clip_id}.mp4`` and return its parquet row."""
    scene = sample_scene(seed, split, index)
    rel = f"videos/{split}/{scene.clip_id}.mp4"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    out = cv2.VideoWriter(str(root / rel), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (ROVER_CAM.width, ROVER_CAM.height))
    if not out.isOpened():
        raise RuntimeError("OpenCV cannot write mp4v video (no FFmpeg backend?)")
    for pose in scene.poses:
        out.write(cv2.cvtColor(render(scene.layout, pose, ROVER_CAM, scene.light, scene.fog_m).rgb, cv2.COLOR_RGB2BGR))
    out.release()
    return {"clip_id": scene.clip_id, "video": rel, "fps": FPS, "n_frames": N_FRAMES,
            "telemetry": scene.telemetry.tolist(), "risk": scene.risk, "reason": scene.reason, "action": scene.action}


def write_parquet(root: Path, split: str, rows: list[dict]) -> None:
    """``{split}.parquet`` with weight = inverse frequency of the row's risk class (mean weight 1)."""
    counts = {r: sum(row["risk"] == r for row in rows) for r in RISK}
    present = sum(1 for c in counts.values() if c)
    table = pa.Table.from_pylist(
        [{**row, "weight": len(rows) / (present * counts[row["risk"]])} for row in rows], schema=SCHEMA)
    pq.write_table(table, root / f"{split}.parquet")
