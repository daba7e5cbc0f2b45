"""Pictures for inspecting geometry and keyframe choice: a contact sheet and a top-down map.

Pure functions of arrays (no cache reading): the CLI loads the arrays and calls these. Every
picture is written with ``save_figure`` (``cache_specs.plotting``), atomically, so a crash never
leaves half a PNG behind. matplotlib is imported inside the functions, so ``navcache --help`` stays fast.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from navcache.cache_specs.plotting import DPI, new_figure, save_figure  # noqa: F401  (save_figure: re-exported)

# Keyframes everywhere (sheet borders, sheet labels, map markers, coverage curve) use this colour:
# a saturated magenta is rare in real footage, so a border cannot be mistaken for image content.
HIGHLIGHT_RGB: tuple[int, int, int] = (230, 0, 126)
HIGHLIGHT = "#e6007e"
BACKGROUND_RGB: tuple[int, int, int] = (255, 255, 255)

MAX_DRAWN_POINTS = 50_000


# ----------------------------------------------------------------------------------------------
# contact sheet

_MAX_COLS = 16
_GRID_BUDGET_PX = 2400  # grid width cap: the whole sheet stays under ~2500 px for S = 128
_MAX_THUMB_W, _MAX_THUMB_H = 200, 160
_BORDER = 5  # reserved around every thumbnail; filled with HIGHLIGHT only for keyframes
_MIN_CELL_W = 60  # room for a label like "12345 #12" under tiny thumbnails
_LABEL_H = 14
_GAP = 6
_MARGIN = 12
_TITLE_H = 28
_CURVE_H = 280
_CURVE_MAX_W = 1200
_MIN_WIDTH = 640


@dataclass(frozen=True)
class SheetLayout:
    """Where everything sits on a contact sheet, in PNG pixels (origin top-left, ends exclusive).

    boxes     int64 [S, 4] (x0, y0, x1, y1): each thumbnail including its ``border``-px frame; the
              image itself is ``[y0 + border : y1 - border, x0 + border : x1 - border]``.
    labels    int64 [S, 2] (x, y): centre of each thumbnail's label, in the band under its box.
    grid      (x0, y0, x1, y1) of the thumbnail grid; ``curve`` the same for the coverage panel.
    """

    width: int
    height: int
    cols: int
    rows: int
    thumb_w: int
    thumb_h: int
    border: int
    boxes: np.ndarray
    labels: np.ndarray
    grid: tuple[int, int, int, int]
    curve: tuple[int, int, int, int]


def sheet_layout(n_frames: int, frame_h: int, frame_w: int, title: bool = False) -> SheetLayout:
    """The contact-sheet layout for ``n_frames`` frames of ``frame_h x frame_w`` pixels."""
    if n_frames < 1 or frame_h < 1 or frame_w < 1:
        raise ValueError(f"sheet_layout needs at least one non-empty frame, got S={n_frames}, H={frame_h}, W={frame_w}")
    # about twice as many columns as rows reads well for 4:3 / 16:9 frames
    cols = min(n_frames, _MAX_COLS, math.ceil(math.sqrt(2 * n_frames)))
    rows = math.ceil(n_frames / cols)
    cell_budget = _GRID_BUDGET_PX // cols - _GAP - 2 * _BORDER
    scale = min(1.0, cell_budget / frame_w, _MAX_THUMB_W / frame_w, _MAX_THUMB_H / frame_h)  # never upscale
    tw, th = max(1, int(frame_w * scale)), max(1, int(frame_h * scale))
    box_w, box_h = tw + 2 * _BORDER, th + 2 * _BORDER
    cell_w, cell_h = max(box_w, _MIN_CELL_W), box_h + _LABEL_H
    grid_w, grid_h = cols * cell_w + (cols - 1) * _GAP, rows * cell_h + (rows - 1) * _GAP
    width = max(_MIN_WIDTH, grid_w + 2 * _MARGIN)
    gx, gy = (width - grid_w) // 2, _MARGIN + (_TITLE_H if title else 0)
    curve_y0 = gy + grid_h + _MARGIN
    height = curve_y0 + _CURVE_H + _MARGIN
    curve_w = min(width - 2 * _MARGIN, _CURVE_MAX_W)
    curve_x0 = (width - curve_w) // 2

    r, c = np.divmod(np.arange(n_frames), cols)
    x0 = gx + c * (cell_w + _GAP) + (cell_w - box_w) // 2
    y0 = gy + r * (cell_h + _GAP)
    boxes = np.stack([x0, y0, x0 + box_w, y0 + box_h], axis=1).astype(np.int64)
    labels = np.stack([x0 + box_w // 2, y0 + box_h + _LABEL_H // 2], axis=1).astype(np.int64)
    return SheetLayout(width, height, cols, rows, tw, th, _BORDER, boxes, labels,
                       (gx, gy, gx + grid_w, gy + grid_h), (curve_x0, curve_y0, curve_x0 + curve_w, curve_y0 + _CURVE_H))


def _check_keyframes(n_frames: int, keyframe_positions, pick_order, gains, coverage) -> tuple[np.ndarray, ...]:
    pos = np.asarray(keyframe_positions, dtype=np.int64).reshape(-1)
    k = len(pos)
    order = np.asarray(pick_order, dtype=np.int64).reshape(-1)
    gains = np.asarray(gains, dtype=np.float64).reshape(-1)
    coverage = np.asarray(coverage, dtype=np.float64).reshape(-1)
    for name, a in (("pick_order", order), ("gains", gains), ("coverage", coverage)):
        if len(a) != k:
            raise ValueError(f"{name} has {len(a)} entries, keyframe_positions has {k}")
    if k and (pos.min() < 0 or pos.max() >= n_frames):
        raise ValueError(f"keyframe_positions must index the {n_frames} sampled frames, got {pos.tolist()}")
    if len(np.unique(pos)) != k:
        raise ValueError(f"keyframe_positions has duplicates: {pos.tolist()}")
    if sorted(order.tolist()) != list(range(k)):
        raise ValueError(f"pick_order must be a permutation of 0..{k - 1} (pick number of each keyframe), got {order.tolist()}")
    return pos, order, gains, coverage


def _thumbnail_grid(frames: np.ndarray, lay: SheetLayout, keyframe_positions: np.ndarray) -> np.ndarray:
    """The grid area of the sheet as uint8 [grid_h, grid_w, 3] RGB, borders painted in."""
    import cv2

    gx0, gy0, gx1, gy1 = lay.grid
    grid = np.empty((gy1 - gy0, gx1 - gx0, 3), np.uint8)
    grid[:] = BACKGROUND_RGB
    b = lay.border
    is_key = np.zeros(len(frames), bool)
    is_key[keyframe_positions] = True
    for i, frame in enumerate(frames):
        x0, y0, x1, y1 = lay.boxes[i] - (gx0, gy0, gx0, gy0)
        if is_key[i]:
            grid[y0:y1, x0:x1] = HIGHLIGHT_RGB
        # INTER_AREA averages source pixels, so fine texture does not alias into moire
        grid[y0 + b : y1 - b, x0 + b : x1 - b] = cv2.resize(np.ascontiguousarray(frame), (lay.thumb_w, lay.thumb_h), interpolation=cv2.INTER_AREA)
    return grid


def contact_sheet(
    frames: np.ndarray,
    frame_index: np.ndarray,
    keyframe_positions: np.ndarray,
    pick_order: np.ndarray,
    gains: np.ndarray,
    coverage: np.ndarray,
    uniform_coverage: np.ndarray | None,
    out: str | os.PathLike,
    title: str = "",
) -> Path:
    """All sampled frames as labelled thumbnails, keyframes framed in ``HIGHLIGHT``, coverage below.

    frames              uint8 [S, H, W, 3] RGB, S >= 1.
    frame_index         int [S]: source frame of each row (shown under its thumbnail; < 0 = "pad").
    keyframe_positions  int [k]: rows of ``frames`` chosen as keyframes (k may be 0).
    pick_order          int [k]: 0-based pick number of ``keyframe_positions[i]`` (a permutation of
                        0..k-1); shown as "#n" with n = pick_order + 1.
    gains               float [k], aligned with ``keyframe_positions`` like ``pick_order`` (the
                        keyframes cache's ``gain`` column as is): what that pick added; drawn as
                        bars at x = pick_order + 1 on a right-hand axis.
    coverage            float [k], in PICK order: cumulative covered fraction after each pick
                        (from the cache: ``coverage[np.argsort(pick_order)]``).
    uniform_coverage    float [k'] or None: the same curve for uniformly spaced keyframes.
    Layout: ``sheet_layout(S, H, W, bool(title))`` (the PNG is exactly that size).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 [S, H, W, 3] with S >= 1, got {frames.dtype} {frames.shape}")
    s, h, w, _ = frames.shape
    frame_index = np.asarray(frame_index).reshape(-1)
    if len(frame_index) != s:
        raise ValueError(f"frame_index has {len(frame_index)} entries, frames has {s}")
    pos, order, gains, coverage = _check_keyframes(s, keyframe_positions, pick_order, gains, coverage)
    lay = sheet_layout(s, h, w, title=bool(title))

    fig = new_figure(lay.width, lay.height)
    gx0, _, _, gy1 = lay.grid
    # figimage puts the array 1:1 on the canvas (no resampling at savefig dpi == fig.dpi), which is
    # what makes ``lay.boxes`` exact pixel coordinates; yo counts from the bottom edge
    fig.figimage(_thumbnail_grid(frames, lay, pos), xo=gx0, yo=lay.height - gy1, origin="upper", resize=False)

    pick_of = dict(zip(pos.tolist(), order.tolist()))
    for i in range(s):
        fi = int(frame_index[i])
        text, style = (str(fi) if fi >= 0 else "pad"), {"color": "#333333"}
        if i in pick_of:
            text, style = f"{text} #{pick_of[i] + 1}", {"color": HIGHLIGHT, "fontweight": "bold"}
        lx, ly = lay.labels[i]
        fig.text(lx / lay.width, 1 - ly / lay.height, text, ha="center", va="center", fontsize=7, **style)
    if title:
        fig.text(0.5, 1 - (_MARGIN + _TITLE_H / 2) / lay.height, title, ha="center", va="center", fontsize=12)

    _coverage_axes(fig, lay, order, gains, coverage, uniform_coverage)
    return save_figure(fig, out)


def _coverage_axes(fig, lay: SheetLayout, pick_order: np.ndarray, gains: np.ndarray, coverage: np.ndarray, uniform_coverage) -> None:
    from matplotlib.ticker import MaxNLocator

    # leave room inside the curve panel for tick labels (left, bottom), the title and the gain axis
    x0, y0, x1, y1 = lay.curve
    left, right, top, bottom = 60, 60, 24, 40
    ax = fig.add_axes([(x0 + left) / lay.width, 1 - (y1 - bottom) / lay.height,
                       (x1 - x0 - left - right) / lay.width, (y1 - y0 - top - bottom) / lay.height])
    k = len(coverage)
    ymax = 1.0
    if k:
        if np.isfinite(gains).any():
            # gains behind the curves: a twin axis draws on top unless the main axes is raised
            ax2 = ax.twinx()
            ax2.bar(pick_order + 1, np.nan_to_num(gains), width=0.6, color=HIGHLIGHT, alpha=0.2, label="gain of pick")
            ax2.set_ylabel("gain", fontsize=8)
            ax2.tick_params(labelsize=7)
            ax.set_zorder(ax2.get_zorder() + 1)
            ax.patch.set_visible(False)
        ax.plot(np.arange(k + 1), np.r_[0.0, coverage], "-o", ms=3, color=HIGHLIGHT, label="keyframes (greedy)")
        ymax = max(ymax, float(np.nanmax(coverage, initial=0.0)))
    else:
        ax.text(0.5, 0.5, "no keyframes", transform=ax.transAxes, ha="center", va="center", color="#888888")
    if uniform_coverage is not None:
        u = np.asarray(uniform_coverage, dtype=np.float64).reshape(-1)
        if len(u):
            ax.plot(np.arange(len(u) + 1), np.r_[0.0, u], "--s", ms=3, color="#555555", label="uniform")
            ymax = max(ymax, float(np.nanmax(u, initial=0.0)))
    ax.set_ylim(0, ymax * 1.05)
    ax.set_xlim(left=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of keyframes picked", fontsize=8)
    ax.set_ylabel("coverage (fraction)", fontsize=8)
    ax.set_title("coverage vs picks", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    handles = [h for a in fig.axes[-2:] for h in a.get_legend_handles_labels()[0]]
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="lower right")


# ----------------------------------------------------------------------------------------------
# top-down map


def subsample_points(points: np.ndarray, limit: int = MAX_DRAWN_POINTS, seed: int = 0) -> np.ndarray:
    """At most ``limit`` rows of ``points`` [N, D], chosen by a fixed seed, kept in input order.

    Random rather than strided: points often come ordered (by frame, by voxel), and a stride would
    draw stripes. The fixed seed makes the same input draw the same picture.
    """
    points = np.asarray(points)
    if len(points) <= limit:
        return points
    keep = np.sort(np.random.default_rng(seed).choice(len(points), size=limit, replace=False))
    return points[keep]


def topdown(
    camera_centres: np.ndarray,
    optical_axes: np.ndarray,
    points: np.ndarray,
    keyframe_positions: np.ndarray,
    out: str | os.PathLike,
    plane: tuple[int, int] = (0, 2),
    title: str = "",
) -> Path:
    """A map seen from above: points (light), the camera path, heading arrows, keyframes marked.

    camera_centres      float [S, 3] world positions, in path order.
    optical_axes        float [S, 3] unit viewing directions in world.
    points              float [N, 3] world points; at most ``MAX_DRAWN_POINTS`` are drawn.
    keyframe_positions  int [k]: rows of ``camera_centres`` that are keyframes.
    plane               (horizontal, vertical) world axes of the map. The OpenCV first-camera world
                        has x right, y down, z forward, so (0, 2) looks down from above with forward up.
    Writes a 900 x 900 px PNG with equal aspect.
    """
    a, b = plane
    if {a, b} - {0, 1, 2} or a == b:
        raise ValueError(f"plane must be two distinct world axes out of 0, 1, 2, got {plane}")
    cams = np.asarray(camera_centres, dtype=np.float64).reshape(-1, 3)
    axes = np.asarray(optical_axes, dtype=np.float64).reshape(-1, 3)
    if axes.shape != cams.shape:
        raise ValueError(f"optical_axes {axes.shape} must match camera_centres {cams.shape}")
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    pos = np.asarray(keyframe_positions, dtype=np.int64).reshape(-1)
    if len(pos) and (pos.min() < 0 or pos.max() >= len(cams)):
        raise ValueError(f"keyframe_positions must index the {len(cams)} cameras, got {pos.tolist()}")

    pts = subsample_points(pts[np.isfinite(pts).all(1)])
    p2 = pts[:, [a, b]]
    ok = np.isfinite(cams).all(1)
    c2 = cams[:, [a, b]]

    fig = new_figure(900, 900)
    ax = fig.add_axes([0.09, 0.08, 0.88, 0.84])
    if len(p2):
        ax.scatter(p2[:, 0], p2[:, 1], s=0.5, c="#b4b4b4", linewidths=0, label=f"points ({len(pts)} drawn)", zorder=1)
    if ok.any():
        # NaN rows break the line, which is honest: the path is unknown there
        ax.plot(np.where(ok, c2[:, 0], np.nan), np.where(ok, c2[:, 1], np.nan), "-", lw=1.5, color="#6baed6", label="camera path", zorder=2)
        first, last = np.flatnonzero(ok)[[0, -1]]
        ax.plot(*c2[first], "^", ms=8, color="#2ca02c", label="start", zorder=4)
        ax.plot(*c2[last], "s", ms=7, color="black", label="end", zorder=4)

    lo, hi = _view_box(p2, c2[ok])
    span = float(max(hi - lo)) or 1.0
    heading = axes[:, [a, b]]
    norm = np.linalg.norm(heading, axis=1)
    # normalised in the plane so a pitched-down camera still shows where it faces; a camera
    # looking straight along the third axis has no heading and gets no arrow
    show = ok & np.isfinite(norm) & (norm > 1e-3)
    # about 40 evenly spaced arrows plus every keyframe: denser paths only paint a solid band
    sparse = np.zeros(len(cams), bool)
    sparse[:: max(1, math.ceil(len(cams) / 40))] = True
    sparse[pos] = True
    show &= sparse
    if show.any():
        d = heading[show] / norm[show, None] * 0.04 * span
        ax.quiver(c2[show, 0], c2[show, 1], d[:, 0], d[:, 1], angles="xy", scale_units="xy", scale=1,
                  width=0.0025, color="#08306b", alpha=0.9, zorder=3, label="heading")
    kf = pos[ok[pos]] if len(pos) else pos
    if len(kf):
        ax.scatter(c2[kf, 0], c2[kf, 1], s=70, c=HIGHLIGHT, edgecolors="black", linewidths=0.8, zorder=5, label=f"keyframes ({len(kf)})")

    lo, hi = _fill_aspect(lo, hi, (0.84 * 900) / (0.88 * 900))
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal", adjustable="box")  # limits already match the box, so it barely moves
    names = "xyz"
    ax.set_xlabel(f"world {names[a]}", fontsize=9)
    ax.set_ylabel(f"world {names[b]}", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.25)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper right", markerscale=1.5)
    ax.set_title(title or "top-down view", fontsize=11)
    return save_figure(fig, out)


def _fill_aspect(lo: np.ndarray, hi: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Widen the shorter side of the box (lo, hi) around its centre until height / width == ratio."""
    centre, size = (lo + hi) / 2, hi - lo
    size = np.maximum(size, [size[1] / ratio, size[0] * ratio])
    return centre - size / 2, centre + size / 2


def _view_box(points_2d: np.ndarray, cams_2d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo [2], hi [2]) covering every camera and the bulk of the points, with a 5 % margin.

    Points use the 0.5-99.5 percentiles: a handful of far-off triangulation outliers would
    otherwise shrink the camera path to a dot.
    """
    parts = []
    if len(points_2d):
        parts.append(np.percentile(points_2d, [0.5, 99.5], axis=0))
    if len(cams_2d):
        parts.append(np.stack([cams_2d.min(0), cams_2d.max(0)]))
    if not parts:
        return np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    both = np.concatenate(parts)
    lo, hi = both.min(0), both.max(0)
    span = float(max(hi - lo))
    pad = 0.05 * span if span > 0 else 1.0  # one camera and no points: still a readable 2 x 2 box
    return lo - pad, hi + pad
