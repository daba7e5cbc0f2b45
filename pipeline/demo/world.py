"""Procedural floor plans: rooms joined by corridors, with box obstacles and person columns.

A layout lives on a coarse occupancy grid (``CELL`` metres per cell, ``grid[row, col]`` with
row along +y and col along +x). Everything outside rooms and corridors is wall, so the world is
closed and every camera ray hits something. Boxes and persons are continuous-coordinate objects
placed inside rooms, away from the room boundary so doorways always stay passable.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

CELL = 0.5  # metres per grid cell
PLAN_RES = CELL / 2  # planning grid resolution, one 25 cm forward step per planning cell
CEILING_H = 2.5
CORRIDOR = 255  # grid value of corridor cells; rooms are 1..n, walls 0

# Streams keep (seed, purpose, split, index) layouts independent: val never reuses a train layout.
PURPOSES = {"navila": 0, "rover": 1, "test": 2, "videos": 3, "lerobot": 4, "glances": 5}
SPLITS = {"train": 0, "val": 1}

ROOM_COLORS = np.array([[0.85, 0.80, 0.70], [0.70, 0.78, 0.86], [0.78, 0.86, 0.72],
                        [0.88, 0.74, 0.74], [0.80, 0.76, 0.88], [0.90, 0.86, 0.62]], np.float32)
CORRIDOR_COLOR = np.array([0.66, 0.66, 0.64], np.float32)
BOX_COLORS = {"brown": (0.55, 0.38, 0.20), "blue": (0.20, 0.35, 0.70),
              "grey": (0.45, 0.45, 0.48), "green": (0.25, 0.50, 0.30)}
SHIRT_COLORS = {"red": (0.80, 0.12, 0.12), "blue": (0.15, 0.30, 0.85), "green": (0.15, 0.65, 0.25),
                "yellow": (0.92, 0.80, 0.10), "orange": (0.95, 0.50, 0.10), "purple": (0.55, 0.20, 0.65)}
SKIN = np.array([[0.96, 0.80, 0.69], [0.80, 0.60, 0.45], [0.55, 0.38, 0.26], [0.36, 0.24, 0.16]], np.float32)
TROUSERS = np.array([[0.12, 0.14, 0.25], [0.20, 0.20, 0.20], [0.45, 0.38, 0.28]], np.float32)


@dataclass(frozen=True)
class Room:
    """A room rectangle in cells: rows [r0, r1), cols [c0, c1)."""

    rid: int
    r0: int
    c0: int
    r1: int
    c1: int

    def bounds_m(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) in metres."""
        return self.c0 * CELL, self.r0 * CELL, self.c1 * CELL, self.r1 * CELL


@dataclass(frozen=True, eq=False)
class Layout:
    """One closed floor plan.

    grid: uint8 [R, C], 0 wall, 1..n room id, 255 corridor.
    seg: float64 [S, 4] axis-aligned wall faces (x0, y0, x1, y1) with x0 <= x1, y0 <= y1.
    seg_vertical: bool [S], True for faces at constant x (they face +-x).
    seg_color: float32 [S, 3] base RGB in [0, 1]; seg_phase: float32 [S] stripe phase.
    boxes: float64 [B, 5] (xmin, ymin, xmax, ymax, height); box_color float32 [B, 3].
    persons: float64 [P, 4] (cx, cy, radius, height); person_color float32 [P, 3, 3] (skin, shirt, trousers).
    box_room / person_room: int [B] / [P] room id holding the object.
    box_names / person_names: colour words for instructions ("blue", "red").
    """

    name: str
    grid: np.ndarray
    rooms: tuple[Room, ...]
    seg: np.ndarray
    seg_vertical: np.ndarray
    seg_color: np.ndarray
    seg_phase: np.ndarray
    boxes: np.ndarray
    box_color: np.ndarray
    box_room: np.ndarray
    box_names: tuple[str, ...]
    persons: np.ndarray
    person_color: np.ndarray
    person_room: np.ndarray
    person_names: tuple[str, ...]

    @functools.cached_property
    def plan_clear(self) -> np.ndarray:
        """float32 [2R, 2C] clearance (metres) to the nearest wall or object on the planning grid.

        Lazy: only NaVILA episodes plan, rover scenes never need it."""
        return _plan_clearance(self.grid, self.boxes, self.persons)

    def region_at(self, xy: np.ndarray) -> np.ndarray:
        """Grid value under points xy [N, 2] -> uint8 [N] (0 outside or in walls)."""
        return _region_at(self.grid, xy)

    def clearance(self, xy: np.ndarray) -> np.ndarray:
        """Exact distance (metres) from points xy [N, 2] to the nearest wall face, box or person.

        Points inside a wall cell or an object get 0, so ``clearance > r`` means a disc of radius r fits.
        """
        p = np.asarray(xy, np.float64).reshape(-1, 1, 2)
        # closest point on each axis-aligned face is a clamp, which also covers segment ends
        q = np.clip(p, self.seg[None, :, 0:2], self.seg[None, :, 2:4])
        d = np.linalg.norm(p - q, axis=2).min(1)
        if len(self.boxes):
            q = np.clip(p, self.boxes[None, :, 0:2], self.boxes[None, :, 2:4])
            d = np.minimum(d, np.linalg.norm(p - q, axis=2).min(1))
        if len(self.persons):
            dc = np.linalg.norm(p - self.persons[None, :, 0:2], axis=2) - self.persons[None, :, 2]
            d = np.minimum(d, dc.min(1))
        return np.where(self.region_at(p[:, 0]) > 0, np.maximum(d, 0.0), 0.0)

    def room_desc(self, rid: int) -> str:
        """Instruction phrase naming a room by its contents ("the room with the boxes")."""
        nb = int((self.box_room == rid).sum())
        np_ = int((self.person_room == rid).sum())
        if np_ > 1:
            return "the room with the people"
        if np_ == 1:
            return "the room with the person"
        if nb > 1:
            return "the room with the boxes"
        return "the room with the box" if nb == 1 else "the empty room"


def _region_at(grid: np.ndarray, xy: np.ndarray) -> np.ndarray:
    rc = np.floor(np.asarray(xy, np.float64).reshape(-1, 2)[:, ::-1] / CELL).astype(int)
    ok = (rc >= 0).all(1) & (rc[:, 0] < grid.shape[0]) & (rc[:, 1] < grid.shape[1])
    out = np.zeros(len(rc), np.uint8)
    out[ok] = grid[rc[ok, 0], rc[ok, 1]]
    return out


def layout_rng(seed: int, purpose: str, split: str, index: int, variant: int = 0) -> np.random.Generator:
    """Independent generator for one (seed, purpose, split, index, variant)."""
    return np.random.default_rng([seed, PURPOSES[purpose], SPLITS[split], index, variant])


def _place_rooms(rng: np.random.Generator, size: int, n_rooms: int) -> list[Room]:
    # One room per quadrant slot: rooms never overlap and corridors between them get some length.
    half = size // 2
    slots = rng.permutation(4)[:n_rooms]
    rooms: list[Room] = []
    for k, slot in enumerate(slots):
        h, w = (int(v) for v in rng.integers(6, half - 3, size=2))
        r0 = (slot // 2) * half + 1 + int(rng.integers(0, half - 2 - h))
        c0 = (slot % 2) * half + 1 + int(rng.integers(0, half - 2 - w))
        rooms.append(Room(k + 1, r0, c0, r0 + h, c0 + w))
    return rooms


def _carve_corridors(rng: np.random.Generator, grid: np.ndarray, rooms: list[Room], widths: tuple[int, int]) -> None:
    centers = np.array([((r.r0 + r.r1) // 2, (r.c0 + r.c1) // 2) for r in rooms])
    # Prim's tree on room centres connects every room; one extra edge sometimes makes a loop.
    edges, inside = [], {0}
    while len(inside) < len(rooms):
        a, b = min(((a, b) for a in inside for b in range(len(rooms)) if b not in inside),
                   key=lambda e: np.abs(centers[e[0]] - centers[e[1]]).sum())
        edges.append((a, b))
        inside.add(b)
    if len(rooms) > 2 and rng.random() < 0.5:
        edges.append((0, len(rooms) - 1))
    for a, b in edges:
        (ra, ca), (rb, cb) = centers[a], centers[b]
        w = int(rng.integers(widths[0], widths[1] + 1))
        lo = -(w // 2)
        rows = slice(min(ra, rb) + lo, max(ra, rb) + lo + w)
        cols = slice(min(ca, cb) + lo, max(ca, cb) + lo + w)
        if rng.random() < 0.5:  # horizontal leg at a's row, then vertical leg at b's column
            grid[ra + lo:ra + lo + w, cols] = CORRIDOR
            grid[rows, cb + lo:cb + lo + w] = CORRIDOR
        else:
            grid[rows, ca + lo:ca + lo + w] = CORRIDOR
            grid[rb + lo:rb + lo + w, cols] = CORRIDOR
    for r in rooms:  # rooms overwrite corridor cells that cross them
        grid[r.r0:r.r1, r.c0:r.c1] = r.rid


def _wall_segments(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of free/wall boundary edges -> (seg [S,4], vertical [S], free-side region [S])."""
    free = grid > 0
    segs: list[tuple[float, float, float, float]] = []
    vertical: list[bool] = []
    region: list[int] = []
    for axis in (0, 1):
        f = free if axis == 0 else free.T
        g = grid if axis == 0 else grid.T
        for i in range(f.shape[0] - 1):
            edge = f[i] != f[i + 1]
            # which side is free decides the face direction; runs must not merge across it
            side = np.where(f[i + 1], g[i + 1], g[i]).astype(int) * 2 + f[i + 1]
            j = 0
            while j < f.shape[1]:
                if not edge[j]:
                    j += 1
                    continue
                k = j
                while k + 1 < f.shape[1] and edge[k + 1] and side[k + 1] == side[j]:
                    k += 1
                a, b, c = (i + 1) * CELL, j * CELL, (k + 1) * CELL
                segs.append((b, a, c, a) if axis == 0 else (a, b, a, c))
                vertical.append(axis == 1)
                region.append(int(side[j] // 2))
                j = k + 1
    return np.array(segs, np.float64), np.array(vertical), np.array(region)


def _place_objects(rng: np.random.Generator, rooms: list[Room], n_boxes: int, n_persons: int):
    boxes, box_room, persons, person_room, taken = [], [], [], [], []
    kinds = ["box"] * n_boxes + ["person"] * n_persons
    for kind in kinds:
        for _ in range(30):
            room = rooms[int(rng.integers(len(rooms)))]
            x0, y0, x1, y1 = room.bounds_m()
            # 0.8 m margin keeps a free ring around every room so doorways stay reachable
            if x1 - x0 < 2.0 or y1 - y0 < 2.0:
                break
            cx, cy = rng.uniform(x0 + 0.8, x1 - 0.8), rng.uniform(y0 + 0.8, y1 - 0.8)
            if kind == "box":
                hx, hy = rng.uniform(0.2, 0.45, size=2)
                reach = max(hx, hy)
            else:
                reach = rng.uniform(0.18, 0.25)
            if any(np.hypot(cx - tx, cy - ty) < reach + tr + 0.8 for tx, ty, tr in taken):
                continue
            taken.append((cx, cy, reach))
            if kind == "box":
                boxes.append((cx - hx, cy - hy, cx + hx, cy + hy, rng.uniform(0.4, 1.1)))
                box_room.append(room.rid)
            else:
                persons.append((cx, cy, reach, rng.uniform(1.55, 1.85)))
                person_room.append(room.rid)
            break
    return (np.array(boxes, np.float64).reshape(-1, 5), np.array(box_room, int),
            np.array(persons, np.float64).reshape(-1, 4), np.array(person_room, int))


def _plan_clearance(grid: np.ndarray, boxes: np.ndarray, persons: np.ndarray) -> np.ndarray:
    free = np.kron(grid > 0, np.ones((2, 2), bool))
    ys, xs = (np.indices(free.shape) + 0.5) * PLAN_RES
    for x0, y0, x1, y1, _ in boxes:
        free &= ~((xs > x0 - PLAN_RES / 2) & (xs < x1 + PLAN_RES / 2) & (ys > y0 - PLAN_RES / 2) & (ys < y1 + PLAN_RES / 2))
    for cx, cy, r, _ in persons:
        free &= np.hypot(xs - cx, ys - cy) > r + PLAN_RES / 2
    dt = cv2.distanceTransform(free.astype(np.uint8), cv2.DIST_L2, 5)
    # distance between cell centres overestimates the distance to the obstacle surface by half a cell
    return np.maximum(dt - 0.5, 0.0).astype(np.float32) * PLAN_RES


def make_layout(seed: int, purpose: str, split: str, index: int, variant: int = 0, *, size: int = 24,
                n_rooms: tuple[int, int] = (3, 4), corridor: tuple[int, int] = (2, 3),
                n_boxes: tuple[int, int] = (2, 4), n_persons: tuple[int, int] = (1, 3)) -> Layout:
    """Deterministic layout for (seed, purpose, split, index, variant) on a ``size`` x ``size`` cell grid.

    ``variant`` gives a writer fresh layouts for the same item when a sampled scene does not fit.
    """
    rng = layout_rng(seed, purpose, split, index, variant)
    grid = np.zeros((size, size), np.uint8)
    rooms = _place_rooms(rng, size, int(rng.integers(n_rooms[0], n_rooms[1] + 1)))
    _carve_corridors(rng, grid, rooms, corridor)
    boxes, box_room, persons, person_room = _place_objects(
        rng, rooms, int(rng.integers(n_boxes[0], n_boxes[1] + 1)), int(rng.integers(n_persons[0], n_persons[1] + 1)))
    return _assemble(f"{purpose}/{split}/{seed}/{index}/{variant}", rng, grid, rooms, boxes, box_room, persons, person_room)


def layout_from_grid(grid: np.ndarray, boxes=(), persons=(), rooms: tuple[Room, ...] = (), seed: int = 0) -> Layout:
    """A layout from a hand-made grid (uint8 [R, C], 0 wall) with boxes [B, 5] and persons [P, 4].

    For tests and examples: geometry is exactly what is given; colours come from ``seed``.
    """
    grid = np.array(grid, np.uint8)
    boxes = np.array(boxes, np.float64).reshape(-1, 5)
    persons = np.array(persons, np.float64).reshape(-1, 4)
    box_room = _region_at(grid, (boxes[:, 0:2] + boxes[:, 2:4]) / 2).astype(int)
    person_room = _region_at(grid, persons[:, 0:2]).astype(int)
    return _assemble("custom", np.random.default_rng(seed), grid, list(rooms), boxes, box_room, persons, person_room)


def _assemble(name: str, rng: np.random.Generator, grid: np.ndarray, rooms: list[Room], boxes: np.ndarray,
              box_room: np.ndarray, persons: np.ndarray, person_room: np.ndarray) -> Layout:
    """Close the border, extract wall faces and pick colours: the shared tail of every layout."""
    grid[[0, -1], :] = 0
    grid[:, [0, -1]] = 0
    seg, vertical, region = _wall_segments(grid)
    seg_color = np.where((region == CORRIDOR)[:, None], CORRIDOR_COLOR[None],
                         ROOM_COLORS[(region + int(rng.integers(6))) % len(ROOM_COLORS)])
    box_names = tuple(rng.choice(list(BOX_COLORS), size=len(boxes)).tolist())
    person_names = tuple(rng.choice(list(SHIRT_COLORS), size=len(persons)).tolist())
    person_color = np.array([[SKIN[rng.integers(len(SKIN))], SHIRT_COLORS[n], TROUSERS[rng.integers(len(TROUSERS))]]
                             for n in person_names], np.float32).reshape(-1, 3, 3)
    return Layout(
        name=name, grid=grid, rooms=tuple(rooms), seg=seg, seg_vertical=vertical,
        seg_color=seg_color.astype(np.float32), seg_phase=rng.uniform(0, 1, len(seg)).astype(np.float32),
        boxes=boxes, box_color=np.array([BOX_COLORS[n] for n in box_names], np.float32).reshape(-1, 3),
        box_room=box_room, box_names=box_names, persons=persons, person_color=person_color,
        person_room=person_room, person_names=person_names)
