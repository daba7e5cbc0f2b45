"""Vectorised ray-casting renderer: one ground-plane ray per image column, heights per row.

Walls are full-height (floor to ``CEILING_H``) so a column is ceiling / wall / floor split by the
wall's depth; boxes and person columns have finite heights and are z-buffered on top, one object
at a time (a layout has only a handful), never one pixel at a time.

Conventions: pose (x, y, yaw) with yaw CCW from +x; image column u grows to the camera's right,
row v grows downward. Ray parameters are *z-depths* because each ray direction has a forward
component of exactly 1, so the hit parameter is already the distance along the optical axis.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .world import CEILING_H, Layout

KIND_FLOOR, KIND_CEILING, KIND_WALL, KIND_BOX, KIND_PERSON = range(5)

FLOOR_TONES = np.array([[0.56, 0.52, 0.46], [0.40, 0.37, 0.33]], np.float32)
CEILING_RGB = np.array([0.86, 0.86, 0.84], np.float32)
FOG_RGB = np.array([0.72, 0.73, 0.75], np.float32)
GAIN_MAX = 1.3  # shading gains above this saturate (lit box lids under bright light)

# per-pixel buffers objects are z-buffered into: depth f32, kind i8, palette index i32, gain f32 [H, W]
Buffers = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Camera:
    """Pinhole camera, fx = fy = W / 2 / tan(hfov / 2), principal point at the image centre."""

    width: int = 128
    height: int = 128
    hfov_deg: float = 90.0
    height_m: float = 0.9

    @property
    def fx(self) -> float:
        # rounded so HFOV 90 gives exactly W/2 instead of W/2 + 1 ulp
        return round(self.width / 2 / math.tan(math.radians(self.hfov_deg) / 2), 9)

    @property
    def fy(self) -> float:
        return self.fx

    @property
    def cx(self) -> float:
        return self.width / 2

    @property
    def cy(self) -> float:
        return self.height / 2

    def intrinsics(self) -> dict[str, float]:
        return {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy, "width": self.width,
                "height": self.height, "hfov_deg": self.hfov_deg, "camera_height_m": self.height_m}

    def column_angles(self) -> np.ndarray:
        """float64 [W], horizontal angle of each column's ray, positive to the camera's left."""
        return -np.arctan((np.arange(self.width) + 0.5 - self.cx) / self.fx)


@dataclass(frozen=True)
class Columns:
    """Nearest ground-plane hit per column (object heights ignored).

    depth: float64 [W] z-depth in metres; kind: int8 [W] (KIND_WALL/BOX/PERSON);
    index: int64 [W] index into layout.seg / boxes / persons for that kind.
    """

    depth: np.ndarray
    kind: np.ndarray
    index: np.ndarray


@dataclass(frozen=True)
class Frame:
    """rgb: uint8 [H, W, 3]; depth: float32 [H, W] z-depth metres; kind: int8 [H, W] surface kind."""

    rgb: np.ndarray
    depth: np.ndarray
    kind: np.ndarray


def _rays(cam: Camera, pose: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Origin [2] and ray directions [W, 2] (forward component 1) for a pose (x, y, yaw)."""
    x, y, yaw = (float(v) for v in pose)
    fwd = np.array([math.cos(yaw), math.sin(yaw)])
    right = np.array([math.sin(yaw), -math.cos(yaw)])
    xn = (np.arange(cam.width) + 0.5 - cam.cx) / cam.fx
    d = fwd[None] + xn[:, None] * right[None]
    # exact zeros would make the slab tests divide 0 by 0
    d[d == 0.0] = 1e-12
    return np.array([x, y]), d


def _walls(layout: Layout, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest wall face per ray: (t [W], segment index [W])."""
    s = layout.seg
    vert = layout.seg_vertical
    # faces at constant x use the x component, faces at constant y the y component
    plane = np.where(vert, s[:, 0], s[:, 1])
    comp = np.where(vert[None], d[:, 0:1], d[:, 1:2])
    t = (plane[None] - np.where(vert, o[0], o[1])[None]) / comp
    along = np.where(vert[None], o[1] + t * d[:, 1:2], o[0] + t * d[:, 0:1])
    lo = np.where(vert, s[:, 1], s[:, 0])
    hi = np.where(vert, s[:, 3], s[:, 2])
    ok = (t > 1e-9) & (along >= lo[None] - 1e-9) & (along <= hi[None] + 1e-9)
    t = np.where(ok, t, np.inf)
    idx = t.argmin(1)
    return t[np.arange(len(t)), idx], idx


def _boxes(layout: Layout, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slab test per (ray, box): near [W, B], far [W, B], near face is at constant x [W, B]."""
    b = layout.boxes
    tx = (b[None, :, [0, 2]] - o[0]) / d[:, None, 0:1]
    ty = (b[None, :, [1, 3]] - o[1]) / d[:, None, 1:2]
    txn, tyn = tx.min(2), ty.min(2)
    near = np.maximum(txn, tyn)
    far = np.minimum(tx.max(2), ty.max(2))
    near = np.where((far >= near) & (near > 0), near, np.inf)
    return near, far, txn >= tyn


def _persons(layout: Layout, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ray/circle per (ray, person): near [W, P], far [W, P] (inf where missed)."""
    p = layout.persons
    oc = o[None] - p[:, 0:2]  # [P, 2]
    a = (d * d).sum(1)[:, None]
    bh = d @ oc.T  # half of b in the quadratic
    c = (oc * oc).sum(1)[None] - p[None, :, 2] ** 2
    disc = bh * bh - a * c
    root = np.sqrt(np.maximum(disc, 0))
    near = (-bh - root) / a
    far = (-bh + root) / a
    return np.where((disc > 0) & (near > 0), near, np.inf), far


def cast_columns(layout: Layout, pose: ArrayLike, cam: Camera = Camera()) -> Columns:
    """Nearest wall, box or person footprint along each column's ground-plane ray."""
    o, d = _rays(cam, pose)
    tw, iw = _walls(layout, o, d)
    cand = [tw[:, None]]
    kinds = [KIND_WALL]
    if len(layout.boxes):
        cand.append(_boxes(layout, o, d)[0])
        kinds.append(KIND_BOX)
    if len(layout.persons):
        cand.append(_persons(layout, o, d)[0])
        kinds.append(KIND_PERSON)
    best = np.full(cam.width, np.inf)
    kind = np.full(cam.width, KIND_WALL, np.int8)
    index = iw.copy()
    for k, t in zip(kinds, cand):
        j = t.argmin(1)
        tj = t[np.arange(len(t)), j]
        closer = tj < best
        best = np.where(closer, tj, best)
        kind[closer] = k
        index = np.where(closer, iw if k == KIND_WALL else j, index)
    return Columns(best, kind, index)


def _height_window(cam: Camera, yn: np.ndarray, top: float) -> tuple[np.ndarray, np.ndarray]:
    """Per row [H], the z-range where the row's ray is between heights 0 and ``top``."""
    a = (cam.height_m - top) / yn
    b = cam.height_m / yn
    return np.minimum(a, b), np.maximum(a, b)


def _palette(layout: Layout) -> np.ndarray:
    """float32 [N, 3]: wall faces (plain, then striped), floor tones, ceiling, boxes, persons (3 each)."""
    return np.concatenate([layout.seg_color, layout.seg_color * 0.82, FLOOR_TONES, CEILING_RGB[None],
                           layout.box_color, layout.person_color.reshape(-1, 3)]).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _shade_lut(layout: Layout) -> np.ndarray:
    """uint8 [N * 256, 3]: palette entry i at gain level q (0..255 over [0, GAIN_MAX]) at row i*256+q."""
    levels = np.arange(256, dtype=np.float32) * np.float32(255.0 * GAIN_MAX / 255)
    return np.clip(_palette(layout)[:, None] * levels[None, :, None] + 0.5, 0, 255).astype(np.uint8).reshape(-1, 3)


def render(layout: Layout, pose: ArrayLike, cam: Camera = Camera(), light: float = 1.0, fog_m: float = math.inf) -> Frame:
    """Render RGB, z-depth and surface kind at a pose (x, y, yaw).

    light scales all colours (a dark clip uses ~0.1); fog_m is the fog's e-folding distance.
    Each pixel gets a palette index and a shading gain; the colour is one lookup in a per-layout
    (palette x 256 gain levels) table, which keeps every per-pixel step single-channel.
    """
    n_seg = len(layout.seg)
    floor0, ceil_i, box0 = 2 * n_seg, 2 * n_seg + 2, 2 * n_seg + 3
    person0 = box0 + len(layout.boxes)
    o, d = _rays(cam, pose)
    yn = (np.arange(cam.height) + 0.5 - cam.cy) / cam.fy  # [H], positive below the horizon
    tw, iw = _walls(layout, o, d)
    tw = np.minimum(tw, 100.0)  # a pose outside the closed plan must not produce inf/nan pixels
    yn32, tw32 = yn.astype(np.float32), tw.astype(np.float32)
    low = int(np.searchsorted(yn, 0.0, side="right"))  # rows >= low look down at the floor

    # ceiling above the horizon, floor below; a plane wins where it is nearer than the wall
    plane = np.where(yn > 0, cam.height_m / yn, (cam.height_m - CEILING_H) / yn).astype(np.float32)
    is_plane = plane[:, None] < tw32[None]
    depth = np.minimum(plane[:, None], tw32[None])
    kind = np.where(is_plane, np.where(yn > 0, KIND_FLOOR, KIND_CEILING).astype(np.int8)[:, None], np.int8(KIND_WALL))

    # walls: stripes along each face, darker y-facing faces, a dado band and a skirting board
    vert = layout.seg_vertical[iw]
    hit = o[None] + tw[:, None] * d
    along = np.where(vert, hit[:, 1], hit[:, 0])
    wall_idx = (iw + n_seg * (np.floor(along / 0.4 + layout.seg_phase[iw]).astype(np.int64) & 1)).astype(np.int32)
    zh = np.float32(cam.height_m) - yn32[:, None] * tw32[None]  # [H, W] wall height seen by each pixel
    band = np.where((zh < 0.12) | (np.abs(zh - 1.0) < 0.05), np.float32(0.55), np.float32(1.0))
    gain = np.where(is_plane, np.float32(1.0), band * np.where(vert, 1.0, 0.78).astype(np.float32)[None])

    # floor checker (50 cm squares); floor points have positive coordinates, so truncation = floor
    z2 = (2 * cam.height_m / yn[low:]).astype(np.float32)[:, None]
    d32 = d.astype(np.float32)
    checker = ((np.float32(2 * o[0]) + z2 * d32[None, :, 0]).astype(np.int32)
               + (np.float32(2 * o[1]) + z2 * d32[None, :, 1]).astype(np.int32)) & 1
    idx = np.empty(depth.shape, np.int32)
    idx[low:] = np.where(is_plane[low:], floor0 + checker, wall_idx[None])
    idx[:low] = np.where(is_plane[:low], np.int32(ceil_i), wall_idx[None])

    bufs = (depth, kind, idx, gain)
    if len(layout.boxes):
        near, far, xface = _boxes(layout, o, d)
        for j in np.nonzero((near < tw[:, None]).any(0))[0]:
            _draw_box(layout, cam, j, yn, near[:, j], far[:, j], xface[:, j], box0 + j, bufs)
    if len(layout.persons):
        near, far = _persons(layout, o, d)
        for j in np.nonzero((near < tw[:, None]).any(0))[0]:
            _draw_person(layout, cam, j, o, d, yn, near[:, j], far[:, j], person0 + 3 * j, bufs)

    gain *= np.float32(light) / (np.float32(1.0) + np.float32(0.07) * depth)  # distance falloff and light
    q = np.minimum(gain * np.float32(255 / GAIN_MAX) + np.float32(0.5), np.float32(255)).astype(np.int32)
    out = np.take(_shade_lut(layout), idx * 256 + q, axis=0)
    if math.isfinite(fog_m):  # a convex blend of two values <= 255, so no clipping needed
        f = np.exp(-depth / np.float32(fog_m))[..., None]
        out = (out * f + FOG_RGB * np.float32(255.0 * light) * (1 - f) + np.float32(0.5)).astype(np.uint8)
    return Frame(out, depth, kind)


def _span(near: np.ndarray) -> slice:
    """Columns hit by a convex footprint form one run; a slice keeps the buffer updates as views."""
    hit = np.nonzero(np.isfinite(near))[0]
    return slice(int(hit[0]), int(hit[-1]) + 1)


def _band(zlo: np.ndarray, zhi: np.ndarray, near: np.ndarray, far: np.ndarray) -> slice:
    """Rows whose height window [zlo, zhi] meets the object's depth range: the only rows it can cover."""
    lo, hi = near[np.isfinite(near)].min(), far[np.isfinite(near)].max()
    rows = np.nonzero((zlo <= hi) & (zhi >= lo))[0]
    return slice(int(rows[0]), int(rows[-1]) + 1) if len(rows) else slice(0, 0)


def _draw_box(layout: Layout, cam: Camera, j: int, yn: np.ndarray, near: np.ndarray, far: np.ndarray,
              xface: np.ndarray, pal_i: int, bufs: Buffers) -> None:
    cs = _span(near)
    zlo, zhi = _height_window(cam, yn, float(layout.boxes[j, 4]))
    rs = _band(zlo, zhi, near[cs], far[cs])
    zlo, zhi = zlo[rs, None], zhi[rs, None]
    entry = np.maximum(near[cs][None], zlo)  # [h, n]
    ok = (entry <= np.minimum(far[cs][None], zhi)) & (entry < bufs[0][rs, cs])
    # the ray enters through a side face unless it comes down onto the lid
    side = near[cs][None] >= zlo
    shade = np.where(side, np.where(xface[cs], 0.95, 0.72)[None], 1.15)
    _commit(bufs, rs, cs, ok, entry, KIND_BOX, np.full(ok.shape, pal_i), shade)


def _draw_person(layout: Layout, cam: Camera, j: int, o: np.ndarray, d: np.ndarray, yn: np.ndarray,
                 near: np.ndarray, far: np.ndarray, pal0: int, bufs: Buffers) -> None:
    cs = _span(near)
    cx, cy, r, top = layout.persons[j]
    zlo, zhi = _height_window(cam, yn, float(top))
    rs = _band(zlo, zhi, near[cs], far[cs])
    entry = np.maximum(near[cs][None], zlo[rs, None])
    ok = (entry <= np.minimum(far[cs][None], zhi[rs, None])) & (entry < bufs[0][rs, cs])
    zh = cam.height_m - yn[rs, None] * entry
    part = np.where(zh > top - 0.25, 0, np.where(zh > 0.48 * top, 1, 2))  # skin, shirt, trousers
    # Lambert term on the cylinder side makes the column read as round
    p = o[None] + np.where(np.isfinite(near[cs]), near[cs], 0)[:, None] * d[cs]
    n = (p - np.array([cx, cy])) / r
    lam = np.clip(-(n * d[cs]).sum(1) / np.linalg.norm(d[cs], axis=1), 0, 1)
    _commit(bufs, rs, cs, ok, entry, KIND_PERSON, pal0 + part, np.broadcast_to(0.45 + 0.55 * lam, ok.shape))


def _commit(bufs: Buffers, rs: slice, cs: slice, ok: np.ndarray, entry: np.ndarray, k: int,
            pal_idx: np.ndarray, shade: np.ndarray) -> None:
    """Write an object's visible pixels (mask ok [h, n] over rows rs, columns cs) into depth/kind/idx/gain."""
    for buf, val in zip(bufs, (entry, k, pal_idx, shade)):
        buf[rs, cs][ok] = val[ok] if isinstance(val, np.ndarray) else val
