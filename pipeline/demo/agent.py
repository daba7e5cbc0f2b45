"""Agent trajectories: NaVILA-style discrete episodes and constant-velocity rover arcs.

NaVILA episodes plan on the layout's planning grid (BFS over cells with enough clearance),
shortcut the cell path where a straight line is free, then follow it with NaVILA's primitives:
forward 25 cm or turn 15 degrees, so consecutive frames differ by exactly one primitive.
Poses are (x, y, yaw) in the world frame, yaw in radians CCW from +x.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from .world import CORRIDOR, PLAN_RES, Layout

FORWARD_M = 0.25
TURN_RAD = math.radians(15)
AGENT_RADIUS = 0.2
PLAN_CLEARANCE = 0.3  # planned cells keep a margin over the radius so 7.5 degree drift stays safe
N_HEADINGS = 24


@dataclass(frozen=True)
class Trajectory:
    """poses: float64 [T, 3]; actions: T-1 primitives ("forward" | "left" | "right"), action t
    takes frame t to frame t+1; instruction: templated English; target: ("box" | "person", index)."""

    poses: np.ndarray
    actions: tuple[str, ...]
    instruction: str
    target: tuple[str, int]


def wrap(a: float) -> float:
    """Angle wrapped to (-pi, pi]."""
    return math.pi - (math.pi - a) % (2 * math.pi)


def plan(layout: Layout, start: np.ndarray, goal: np.ndarray) -> np.ndarray | None:
    """Shortest 8-connected cell path from start to goal [2] -> waypoints float64 [K, 2] (or None)."""
    free = layout.plan_clear >= PLAN_CLEARANCE
    s = tuple((np.asarray(start)[::-1] // PLAN_RES).astype(int))
    g = tuple((np.asarray(goal)[::-1] // PLAN_RES).astype(int))
    if not (free[s] and free[g]):
        return None
    prev = {s: s}
    queue = deque([s])
    steps = [(0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)]
    while queue and g not in prev:
        r, c = queue.popleft()
        for dr, dc in steps:
            n = (r + dr, c + dc)
            # diagonal moves only between two free orthogonal neighbours, so paths never cut corners
            if n in prev or not free[n] or (dr and dc and not (free[r + dr, c] and free[r, c + dc])):
                continue
            prev[n] = (r, c)
            queue.append(n)
    if g not in prev:
        return None
    cells = [g]
    while cells[-1] != s:
        cells.append(prev[cells[-1]])
    pts = (np.array(cells[::-1], np.float64)[:, ::-1] + 0.5) * PLAN_RES
    pts[0], pts[-1] = start, goal
    return _shortcut(layout, pts)


def _line_free(layout: Layout, a: np.ndarray, b: np.ndarray) -> bool:
    """Straight segment a-b keeps PLAN_CLEARANCE on the planning grid (sampled every 5 cm)."""
    n = max(2, int(np.linalg.norm(b - a) / 0.05) + 1)
    rc = (np.linspace(a, b, n)[:, ::-1] // PLAN_RES).astype(int)
    return bool((layout.plan_clear[rc[:, 0], rc[:, 1]] >= PLAN_CLEARANCE).all())


def _shortcut(layout: Layout, pts: np.ndarray) -> np.ndarray:
    """Greedy string pulling: from each kept point, jump as far along the path as a free line allows."""
    out, i = [pts[0]], 0
    while i < len(pts) - 1:
        j = i + 1
        while j + 1 < len(pts) and _line_free(layout, pts[i], pts[j + 1]):
            j += 1
        out.append(pts[j])
        i = j
    return np.array(out)


def drive(layout: Layout, x: float, y: float, k: int, waypoints: np.ndarray, face: np.ndarray | None,
          max_steps: int = 200) -> tuple[list[tuple[float, float, int]], list[str]] | None:
    """Follow waypoints [K, 2] with primitives from (x, y, heading index k); optionally end facing ``face``.

    Returns states [(x, y, k)] (one more than actions) or None when a step would collide.
    """
    states, actions = [(x, y, k)], []

    def turn_towards(tx: float, ty: float, slack: float = 0.0) -> bool:
        nonlocal k
        err = wrap(math.atan2(ty - y, tx - x) - k * TURN_RAD)
        if abs(err) <= TURN_RAD / 2 + slack + 1e-9:
            return False
        k += 1 if err > 0 else -1
        actions.append("left" if err > 0 else "right")
        states.append((x, y, k))
        return True

    for i, (wx, wy) in enumerate(waypoints[1:], start=1):
        tol = 0.15 if i == len(waypoints) - 1 else 0.3  # cut intermediate corners, land on the goal
        while math.hypot(wx - x, wy - y) > tol:
            if len(actions) >= max_steps:
                return None
            # hysteresis: once walking, tolerate up to 12 degrees before turning, so the walk does
            # not zigzag left/right around a bearing that falls between two 15 degree headings
            walking = bool(actions) and actions[-1] == "forward"
            if turn_towards(wx, wy, slack=math.radians(4.5) if walking else 0.0):
                continue
            nx, ny = x + FORWARD_M * math.cos(k * TURN_RAD), y + FORWARD_M * math.sin(k * TURN_RAD)
            if layout.clearance(np.array([[nx, ny]]))[0] < AGENT_RADIUS:
                return None
            x, y = nx, ny
            actions.append("forward")
            states.append((x, y, k))
    if face is not None:
        while turn_towards(*face):
            pass
    return states, actions


def to_poses(states: list[tuple[float, float, int]]) -> np.ndarray:
    """States (x, y, heading index) -> float64 [T, 3] poses with yaw wrapped to (-pi, pi]."""
    return np.array([(x, y, wrap(k * TURN_RAD)) for x, y, k in states], np.float64)


def arc_poses(end: tuple[float, float, float], v: float, w: float, n: int, fps: float) -> np.ndarray:
    """Poses [n, 3] of a constant (v, w) drive that ends at ``end`` after (n - 1) / fps seconds."""
    t = (np.arange(n) - (n - 1)) / fps  # seconds relative to the last frame (<= 0)
    x1, y1, th1 = end
    th = th1 + w * t
    if abs(w) < 1e-9:
        x, y = x1 + v * t * math.cos(th1), y1 + v * t * math.sin(th1)
    else:  # exact circular arc: integral of v (cos th, sin th) dt
        x = x1 + v / w * (np.sin(th) - math.sin(th1))
        y = y1 - v / w * (np.cos(th) - math.cos(th1))
    return np.stack(np.broadcast_arrays(x, y, (th + math.pi) % (2 * math.pi) - math.pi), 1).astype(np.float64)


def describe(layout: Layout, poses: np.ndarray, target: tuple[str, int]) -> str:
    """Template an instruction from the rooms and corridors the poses [T, 3] pass through."""
    region = layout.region_at(poses[:, :2])
    runs: list[list[int]] = []  # [region, first frame, last frame]
    for t, r in enumerate(region):
        if runs and runs[-1][0] == r:
            runs[-1][2] = t
        elif r:
            runs.append([int(r), t, t])
    parts: list[str] = []
    first_fwd = next((i for i, (a, b) in enumerate(zip(poses[:-1], poses[1:])) if a[2] == b[2]), 0)
    turned = math.degrees(wrap(poses[first_fwd, 2] - poses[0, 2]))
    if abs(turned) >= 150:
        parts.append("turn around")
    elif abs(turned) >= 60:
        parts.append("turn left" if turned > 0 else "turn right")
    start_room = runs[0][0]
    corridors = 0
    for i, (r, t0, _) in enumerate(runs):
        if r == CORRIDOR:
            parts.append("walk down the corridor" if corridors == 0 else "follow the corridor")
            corridors += 1
        elif i == 0:
            if len(runs) > 1:
                parts.append(f"exit {layout.room_desc(r)}")
        else:
            a, b = max(t0 - 3, 0), min(t0 + 8, len(poses) - 1)  # the turn often follows the doorway
            net = math.degrees(wrap(poses[b, 2] - poses[a, 2]))
            verb = "turn left into" if net > 35 else "turn right into" if net < -35 else "go straight into"
            where = "the room where you started" if r == start_room else layout.room_desc(r)
            parts.append(f"{verb} {where}")
    kind, j = target
    thing = (f"the {layout.box_names[j]} box" if kind == "box"
             else f"the person in the {layout.person_names[j]} shirt")
    text = ", ".join(parts) + f" and stop next to {thing}." if parts else f"Stop next to {thing}."
    return text[0].upper() + text[1:]


def _objects(layout: Layout) -> list[tuple[str, int, int, np.ndarray, float]]:
    """(kind, index, room id, centre [2], footprint reach in metres) for every box and person."""
    out = [("box", j, int(layout.box_room[j]), (b[0:2] + b[2:4]) / 2, float(np.hypot(*(b[2:4] - b[0:2])) / 2))
           for j, b in enumerate(layout.boxes)]
    out += [("person", j, int(layout.person_room[j]), p[0:2], float(p[2])) for j, p in enumerate(layout.persons)]
    return out


def _free_point(layout: Layout, rng: np.random.Generator, rid: int) -> np.ndarray | None:
    room = layout.rooms[rid - 1]
    x0, y0, x1, y1 = room.bounds_m()
    for _ in range(30):
        p = np.array([rng.uniform(x0 + 0.3, x1 - 0.3), rng.uniform(y0 + 0.3, y1 - 0.3)])
        if layout.clearance(p[None])[0] >= PLAN_CLEARANCE + 0.1:
            return p
    return None


def _stop_point(layout: Layout, rng: np.random.Generator, centre: np.ndarray, reach: float) -> np.ndarray | None:
    for _ in range(30):
        a = rng.uniform(0, 2 * math.pi)
        p = centre + (reach + rng.uniform(0.45, 0.75)) * np.array([math.cos(a), math.sin(a)])
        if layout.clearance(p[None])[0] >= PLAN_CLEARANCE + 0.05:
            return p
    return None


def navila_episode(layout: Layout, rng: np.random.Generator, min_len: int = 25, max_len: int = 60,
                   tries: int = 60) -> Trajectory | None:
    """A room-to-room episode that stops facing a box or person, or None if the layout gives none.

    About a third of the episodes leave the target's room first and come back to it (a revisit).
    """
    objects = _objects(layout)
    want_revisit = rng.random() < 0.35
    for attempt in range(tries if objects else 0):
        kind, j, troom, centre, reach = objects[int(rng.integers(len(objects)))]
        others = [r.rid for r in layout.rooms if r.rid != troom]
        revisit = want_revisit and attempt < tries * 2 // 3  # out-and-back is harder to fit; fall back
        other = others[int(rng.integers(len(others)))]
        stop = _stop_point(layout, rng, centre, reach)
        start = _free_point(layout, rng, troom if revisit else other)
        via = None
        if revisit and start is not None:  # the nearest of a few points keeps out-and-back within max_len
            cands = [p for p in (_free_point(layout, rng, other) for _ in range(6)) if p is not None]
            via = min(cands, key=lambda p: float(np.hypot(*(p - start))), default=None)
        if stop is None or start is None or (revisit and via is None):
            continue
        legs = [plan(layout, start, via), plan(layout, via, stop)] if revisit else [plan(layout, start, stop)]
        if any(leg is None for leg in legs):
            continue
        waypoints = np.concatenate([legs[0]] + [leg[1:] for leg in legs[1:]])
        res = drive(layout, float(start[0]), float(start[1]), int(rng.integers(N_HEADINGS)), waypoints, centre,
                    max_steps=max_len)
        if res is None or not min_len <= len(res[0]) <= max_len:
            continue
        poses = to_poses(res[0])
        return Trajectory(poses, tuple(res[1]), describe(layout, poses, (kind, j)), (kind, j))
    return None
