"""Where keyframe B's content lies in keyframe A's view, as the seed shows it: pictures and files per video.

``write_episode_outputs`` writes, for one video (episode) with K keyframes and P ordered pairs (A, B):

    <video>_heatmaps.png           the K x K grid: row A, column B; cell = A's image (grey) with B's
                                   distribution over A's G x G grid overlaid, and out-of-view mass
                                   as bars on the side it lies (left/right/above/below), "behind" as
                                   a purple bar under the image; prediction | ground truth side by
                                   side in each cell when both exist; the diagonal shows A itself
    <video>_heatmap_<k>.png        keyframe k as A, larger, one panel per B with B's thumbnail and
                                   the masses written out (in view, each ring direction)
    <video>_selected_indices.npy   int64 [K] source frame of each keyframe
    <video>_geometry_info.npz      the caller's arrays (cameras, intrinsics, gains, coverage, ...)
    <video>_summary.json           the caller's summary (keyframes, metrics), written last

Distributions are rows over ``G*G + 5`` cells as the ``covisibility`` spec stores them (grid
row-major from the top left, then ``RING``). The colour of a grid cell is its mass in units of
"uniform over A's view" (``mass * G*G``; 1 = as much as an even spread), on one scale shared by
every panel of a picture, so prediction and ground truth compare by colour; a bar's length along
its edge is that direction's mass (a full edge = all of B).

Why the pictures are one numpy RGB canvas with PIL text and not matplotlib figures
(``plotting.new_figure``): a 32-keyframe episode has ~2,000 panels and ~3,000 labels over its 33
pictures; drawn through matplotlib text they took 57 s, as numpy slices and PIL text 17 s (same
loaded 2-core machine; matplotlib renders a label ~30x slower than PIL). Every panel's pixels are also known exactly
(``heatmaps_layout``, ``keyframe_layout``), which lets a test read a picture by sampling pixels.
matplotlib still supplies the colour map and the font (DejaVu Sans). Every file is written by
``layout.atomic_write_bytes`` (PNG bytes encoded in memory by OpenCV, not ``plotting.save_figure``),
so all kinds of output share one temporary naming scheme and the next write sweeps what a killed
writer left (``sweep_stale_temporaries``).
"""
from __future__ import annotations

import functools
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .layout import TMP_PREFIX, atomic_write_bytes, sweep_stale_temporaries
from .specs.covisibility import RING

KINDS = ("pred", "target")  # panel order inside a cell: prediction left, ground truth right
KIND_LABEL = {"pred": "prediction", "target": "ground truth"}
BAR_RGB = (0, 150, 255)  # left/right/above/below: a blue no heat colour is close to
BEHIND_RGB = (150, 60, 200)
GAUGE_RGB = (236, 236, 236)  # the empty part of a bar's area
DIAGONAL_RGB = (230, 0, 126)  # = pipeline.plots.HIGHLIGHT: the keyframe itself
MISSING_RGB = (200, 200, 200)  # a pair without a row
PRESENT = 0.5  # x uniform at which a cell's overlay is fully opaque
_MARGIN, _TITLE_H, _GAP, _LABEL_W = 10, 58, 6, 58
_MIN_WIDTH = 840  # the title and legend lines fit
_GRID_BUDGET_PX, _MAX_THUMB = 3000, 160
_SPLIT = 5  # between a cell's prediction and ground-truth panels, so their bars never touch


@dataclass(frozen=True)
class Panel:
    """One panel in PNG pixels, boxes (x0, y0, x1, y1) with exclusive ends: ``image`` and the area
    each ring bar may fill (``bars[name]``, names as ``RING``), a bar centred along its area."""

    image: tuple[int, int, int, int]
    bars: dict[str, tuple[int, int, int, int]]


def _panel(x: int, y: int, tw: int, th: int, m: int) -> Panel:
    ix0, iy0, ix1, iy1 = x + m, y + m, x + m + tw, y + m + th
    bars = {"left": (x, iy0, ix0, iy1), "right": (ix1, iy0, ix1 + m, iy1), "above": (ix0, y, ix1, iy0),
            "below": (ix0, iy1, ix1, iy1 + m), "behind": (ix0, iy1 + m + 2, ix1, iy1 + 2 * m + 2)}
    return Panel((ix0, iy0, ix1, iy1), bars)


def _panel_size(tw: int, th: int, m: int) -> tuple[int, int]:
    return tw + 2 * m, th + 3 * m + 2


def _bar_margin(tw: int) -> int:
    return max(4, round(tw / 14))


def _thumb(h: int, w: int, max_w: float, max_h: float) -> tuple[int, int]:
    scale = min(max_w / w, max_h / h)
    return max(8, int(w * scale)), max(8, int(h * scale))


@dataclass(frozen=True)
class HeatmapsLayout:
    """``<video>_heatmaps.png``: ``panels[(a, b, kind)]`` (a != b; kind in ``kinds``), ``diagonal[a]``
    the box of A's own image, ``headers[b]`` the box of B's thumbnail above its column."""

    width: int
    height: int
    kinds: tuple[str, ...]
    panels: dict[tuple[int, int, str], Panel]
    diagonal: dict[int, tuple[int, int, int, int]]
    headers: dict[int, tuple[int, int, int, int]]
    row_labels: dict[int, tuple[int, int]]


def heatmaps_layout(n_keyframes: int, frame_h: int, frame_w: int, kinds: tuple[str, ...]) -> HeatmapsLayout:
    k, n = n_keyframes, len(kinds)
    per_panel = (_GRID_BUDGET_PX - _LABEL_W - 2 * _MARGIN) / (k * n) - 3 * _GAP / n
    tw, th = _thumb(frame_h, frame_w, min(_MAX_THUMB, per_panel / 1.15), _MAX_THUMB)
    m = _bar_margin(tw)
    pw, ph = _panel_size(tw, th, m)
    # cells further apart than a cell's own panels, rows more still: bars stay with their panel
    span = n * pw + (n - 1) * _SPLIT
    cell_w, cell_h = span + (3 if n > 1 else 1) * _GAP, ph + 2 * _GAP
    x0, y0 = _MARGIN + _LABEL_W, _MARGIN + _TITLE_H + th + 16  # header row: B's thumbnails + labels
    panels, diagonal, headers, rows = {}, {}, {}, {}
    for a in range(k):
        cy = y0 + a * cell_h
        rows[a] = (_MARGIN + _LABEL_W // 2, cy + m + th // 2)
        for b in range(k):
            cx = x0 + b * cell_w
            if a == 0:
                hx = cx + (span - tw) // 2
                headers[b] = (hx, y0 - th - 14, hx + tw, y0 - 14)
            for i, kind in enumerate(kinds):
                p = _panel(cx + i * (pw + _SPLIT), cy, tw, th, m)
                if a == b:
                    if i == 0:
                        dx = cx + (span - tw) // 2
                        diagonal[a] = (dx, p.image[1], dx + tw, p.image[3])
                else:
                    panels[(a, b, kind)] = p
    return HeatmapsLayout(max(_MIN_WIDTH, x0 + k * cell_w + _MARGIN), y0 + k * cell_h + _MARGIN, kinds, panels, diagonal, headers, rows)


@dataclass(frozen=True)
class KeyframeLayout:
    """``<video>_heatmap_<a>.png``: ``anchor`` the box of A's image; per other keyframe b, ``thumbs[b]``
    its thumbnail, ``panels[(b, kind)]``, ``captions[(b, kind)]`` (x, y) of the mass line under it."""

    width: int
    height: int
    anchor: tuple[int, int, int, int]
    thumbs: dict[int, tuple[int, int, int, int]]
    panels: dict[tuple[int, str], Panel]
    captions: dict[tuple[int, str], tuple[int, int]]


def keyframe_layout(n_keyframes: int, frame_h: int, frame_w: int, kinds: tuple[str, ...], a: int) -> KeyframeLayout:
    n = len(kinds)
    tw, th = _thumb(frame_h, frame_w, 240 if n == 1 else 200, 240)
    m = _bar_margin(tw)
    pw, ph = _panel_size(tw, th, m)
    sw, sh = _thumb(frame_h, frame_w, 72, 72)
    block_w, block_h = max(n * pw + (n - 1) * _SPLIT, sw + 120) + 3 * _GAP, sh + 6 + ph + 34 + 2 * _GAP
    cols = max(1, min(n_keyframes - 1, 1800 // block_w))
    aw, ah = _thumb(frame_h, frame_w, 280, 220)
    anchor = (_MARGIN, _MARGIN + _TITLE_H, _MARGIN + aw, _MARGIN + _TITLE_H + ah)
    y0 = anchor[3] + 2 * _GAP
    thumbs, panels, captions = {}, {}, {}
    others = [b for b in range(n_keyframes) if b != a]
    for j, b in enumerate(others):
        bx, by = _MARGIN + (j % cols) * block_w, y0 + (j // cols) * block_h
        thumbs[b] = (bx + m, by, bx + m + sw, by + sh)
        for i, kind in enumerate(kinds):
            p = _panel(bx + i * (pw + _SPLIT), by + sh + 6, tw, th, m)
            panels[(b, kind)] = p
            captions[(b, kind)] = ((p.image[0] + p.image[2]) // 2, p.bars["behind"][3] + 14)
    rows = math.ceil(len(others) / cols) if others else 0
    width = max(2 * _MARGIN + cols * block_w, anchor[2] + 520, _MIN_WIDTH)
    return KeyframeLayout(width, y0 + rows * block_h + _MARGIN, anchor, thumbs, panels, captions)


# ------------------------------------------------------------------------------------------------
# drawing


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    import cv2

    # INTER_AREA averages when shrinking (no moire); linear when growing a coarse heatmap
    interp = cv2.INTER_AREA if img.shape[1] >= w else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(img), (w, h), interpolation=interp)


def _heat_rgb(grey: np.ndarray, values: np.ndarray, vmax: float) -> np.ndarray:
    """A's dimmed grey image [h, w] with ``values`` [h, w] (x uniform) drawn over it -> uint8 [h, w, 3].

    Opacity says *whether* B's content is there (full from half an even spread on), colour says how
    densely (``inferno`` up to ``vmax``): the extent of B's content reads at a glance, and its peaks too.
    """
    lut = _inferno_lut()
    s = np.clip(values / vmax, 0.0, 1.0)
    rgb = lut[(s * 255).astype(np.int64)]
    alpha = (0.72 * np.clip(values / PRESENT, 0.0, 1.0) ** 0.7)[..., None]
    base = (35.0 + 0.5 * grey)[..., None]
    return np.clip(base * (1 - alpha) + rgb * alpha, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _inferno_lut() -> np.ndarray:
    """float [256, 3] RGB 0..255: ``inferno`` from its dark red third up (black would read as "nothing")."""
    import matplotlib

    return matplotlib.colormaps["inferno"](0.3 + 0.7 * np.linspace(0.0, 1.0, 256))[:, :3] * 255.0


def _cells_to_pixels(row: np.ndarray, grid: int, w: int, h: int) -> np.ndarray:
    """A distribution's grid part as [h, w] values in x-uniform units, each cell a block of pixels."""
    cells = row[: grid * grid].reshape(grid, grid) * (grid * grid)
    gy = np.minimum(np.arange(h) * grid // h, grid - 1)
    gx = np.minimum(np.arange(w) * grid // w, grid - 1)
    return cells[gy[:, None], gx[None, :]]


def _upsampled_to_pixels(up: np.ndarray, inview: float, w: int, h: int) -> np.ndarray:
    """An in-view density [H', W'] (any scale) as [h, w] x-uniform values holding ``inview`` mass."""
    total = float(up.sum())
    dens = up / total * inview * up.size if total > 0 else np.zeros_like(up)
    return _resize(dens.astype(np.float32), w, h)


def _draw_bars(canvas: np.ndarray, p: Panel, ring: np.ndarray) -> None:
    for name, mass in zip(RING, ring):
        x0, y0, x1, y1 = p.bars[name]
        canvas[y0:y1, x0:x1] = GAUGE_RGB
        colour = BEHIND_RGB if name == "behind" else BAR_RGB
        if name in ("left", "right"):
            n = round(float(mass) * (y1 - y0))
            c = (y0 + y1 - n + 1) // 2  # a 1-px bar on the centre pixel
            canvas[c : c + n, x0:x1] = colour
        else:
            n = round(float(mass) * (x1 - x0))
            c = (x0 + x1 - n + 1) // 2
            canvas[y0:y1, c : c + n] = colour


def _paste(canvas: np.ndarray, box: tuple[int, int, int, int], img: np.ndarray) -> None:
    x0, y0, x1, y1 = box
    canvas[y0:y1, x0:x1] = img if img.shape[:2] == (y1 - y0, x1 - x0) else _resize(img, x1 - x0, y1 - y0)


class _Data:
    """The validated inputs and the per-pair lookups both pictures draw from."""

    def __init__(self, frames, grid, pairs, dists, pred_upsampled):
        self.frames, self.grid, self.dists, self.up = frames, grid, dists, pred_upsampled
        self.kinds = tuple(k for k in KINDS if dists[k] is not None)
        self.row = {(int(a), int(b)): i for i, (a, b) in enumerate(pairs)}
        self.grey = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        vals = [d[:, : grid * grid].ravel() * grid * grid for d in dists.values() if d is not None]
        pos = np.concatenate(vals + [np.zeros(1)])
        pos = pos[pos > 0]
        # one scale for every panel (prediction and truth alike); at least 2x uniform, so an even
        # spread reads as "medium", not as a hot spot
        self.vmax = max(2.0, float(np.percentile(pos, 99.5)) if len(pos) else 0.0)

    def draw(self, canvas: np.ndarray, p: Panel, a: int, b: int, kind: str) -> None:
        x0, y0, x1, y1 = p.image
        w, h = x1 - x0, y1 - y0
        r = self.row.get((a, b))
        if r is None:
            canvas[y0:y1, x0:x1] = MISSING_RGB
            return
        dist = self.dists[kind][r]
        if kind == "pred" and self.up is not None:
            vals = _upsampled_to_pixels(self.up[r], float(dist[: self.grid**2].sum()), w, h)
        else:
            vals = _cells_to_pixels(dist, self.grid, w, h)
        canvas[y0:y1, x0:x1] = _heat_rgb(_resize(self.grey[a], w, h), vals, self.vmax)
        _draw_bars(canvas, p, dist[self.grid**2 :])


class _Page:
    """A white canvas uint8 [H, W, 3] that panels are painted into, and the text to put on it last."""

    def __init__(self, width: int, height: int):
        self.canvas = np.full((height, width, 3), 255, np.uint8)
        self.texts: list[tuple] = []

    def text(self, x: float, y: float, s: str, size: int = 10, anchor: str = "mm", fill=(40, 40, 40)) -> None:
        """``s`` (lines split on newlines) at (x, y); ``anchor`` as PIL's ("mm" centred, "lm" left-middle)."""
        self.texts.append((x, y, s, size, anchor, fill))

    def png(self) -> bytes:
        import cv2
        from PIL import Image, ImageDraw

        img = Image.fromarray(self.canvas)
        draw = ImageDraw.Draw(img)
        for x, y, s, size, anchor, fill in self.texts:
            lines, step = s.split("\n"), size + 3
            for i, line in enumerate(lines):
                draw.text((x, y + (i - (len(lines) - 1) / 2) * step), line, font=_font(size), fill=fill, anchor=anchor)
        ok, png = cv2.imencode(".png", np.ascontiguousarray(np.asarray(img)[..., ::-1]))
        if not ok:
            raise RuntimeError("PNG encoding failed")
        return png.tobytes()


@functools.lru_cache(maxsize=8)
def _font(size_px: int):
    """DejaVu Sans (matplotlib's own font, so always installed) at ``size_px`` pixels."""
    from matplotlib import font_manager
    from PIL import ImageFont

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size_px)


def _header(page: _Page, title: str, d: _Data) -> None:
    page.text(_MARGIN, _MARGIN + 10, title, size=16, anchor="lm", fill=(0, 0, 0))
    both = " | ".join(KIND_LABEL[k] for k in d.kinds)
    page.text(_MARGIN, _MARGIN + 31, f"colour: B's mass per cell of A's {d.grid}x{d.grid} grid, in units of an even spread "
              f"(inferno, full at {d.vmax:.2g}x)    panels: {both}", size=11, anchor="lm")
    page.text(_MARGIN, _MARGIN + 46, "blue bars: B's mass out of A's view on that side (a full edge = all)    "
              "purple bar under: behind A", size=11, anchor="lm")


def _heatmaps_png(d: _Data, video: str, sel: np.ndarray) -> bytes:
    k, h, w, _ = d.frames.shape
    lay = heatmaps_layout(k, h, w, d.kinds)
    page = _Page(lay.width, lay.height)
    for (a, b, kind), p in lay.panels.items():
        d.draw(page.canvas, p, a, b, kind)
    for a, box in lay.diagonal.items():
        x0, y0, x1, y1 = box
        page.canvas[y0 - 3 : y1 + 3, x0 - 3 : x1 + 3] = DIAGONAL_RGB
        _paste(page.canvas, box, d.frames[a])
    for b, box in lay.headers.items():
        _paste(page.canvas, box, d.frames[b])
    _header(page, f"{video}: where keyframe B's content lies in keyframe A's view (row A, column B; diagonal: A itself)", d)
    for b, (x0, y0, x1, y1) in lay.headers.items():
        page.text((x0 + x1) / 2, y1 + 7, f"B{b} f{sel[b]}" + ("  (pred | gt)" if len(d.kinds) == 2 and b == 0 else ""))
    for a, (x, y) in lay.row_labels.items():
        page.text(x, y, f"A{a}\nf{sel[a]}", size=11, fill=DIAGONAL_RGB)
    return page.png()


def _caption(dist: np.ndarray, grid: int) -> str:
    inview, ring = float(dist[: grid * grid].sum()), dict(zip(RING, dist[grid * grid :].tolist()))
    sides = "  ".join(f"{arrow}{ring[n]:.2f}" for n, arrow in zip(RING, ("\u2190", "\u2192", "\u2191", "\u2193")))
    return f"in view {inview:.2f}   behind {ring['behind']:.2f}\n{sides}"


def _keyframe_png(d: _Data, video: str, sel: np.ndarray, a: int) -> bytes:
    k, h, w, _ = d.frames.shape
    lay = keyframe_layout(k, h, w, d.kinds, a)
    page = _Page(lay.width, lay.height)
    _paste(page.canvas, lay.anchor, d.frames[a])
    for (b, kind), p in lay.panels.items():
        d.draw(page.canvas, p, a, b, kind)
    for b, box in lay.thumbs.items():
        _paste(page.canvas, box, d.frames[b])
    _header(page, f"{video}: keyframe A{a} (frame {sel[a]}): where each other keyframe B's content lies in A's view", d)
    x0, y0, x1, y1 = lay.anchor
    page.text(x1 + 10, (y0 + y1) / 2, f"A{a}  frame {sel[a]}\n(the view the heatmaps are drawn in)", size=12, anchor="lm", fill=DIAGONAL_RGB)
    for b, (x0, y0, x1, y1) in lay.thumbs.items():
        label = f"B{b}  frame {sel[b]}" + ("\nprediction | ground truth" if len(d.kinds) == 2 else "")
        page.text(x1 + 8, (y0 + y1) / 2, label, size=11, anchor="lm")
    for (b, kind), (x, y) in lay.captions.items():
        r = d.row.get((a, b))
        page.text(x, y, _caption(d.dists[kind][r], d.grid) if r is not None else "no pair", size=10)
    return page.png()


# ------------------------------------------------------------------------------------------------
# checking the inputs and writing the files


def _distribution(name: str, a, p: int, c: int) -> np.ndarray | None:
    if a is None:
        return None
    a = np.asarray(a)
    if a.shape != (p, c) or a.dtype.kind != "f":
        raise ValueError(f"{name} must be float [P, G*G + 5] = [{p}, {c}] (one row per pair), got {a.dtype} {a.shape}")
    if not np.isfinite(a).all() or (a < 0).any():
        raise ValueError(f"{name} must hold finite probabilities >= 0 (a distribution per pair, not logits)")
    return a.astype(np.float64)


def _check(video, frames, selected_indices, grid, pairs, target, pred, pred_upsampled, geometry_info, summary):
    if not isinstance(video, str) or not video or video in (".", "..") or "/" in video or os.sep in video or "\0" in video:
        raise ValueError(f"video must be a non-empty file-name stem without '/', got {video!r}")
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1 or min(frames.shape[1:3]) < 1:
        raise ValueError(f"frames must be uint8 [K, H, W, 3] RGB keyframe images with K >= 1, got {frames.dtype} {frames.shape}")
    k = len(frames)
    sel = np.asarray(selected_indices)
    if sel.shape != (k,) or sel.dtype.kind not in "iu":
        raise ValueError(f"selected_indices must be int [K] = [{k}] (source frame of each keyframe), got {sel.dtype} {sel.shape}")
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 1:
        raise ValueError(f"grid must be a positive int (cells per side of A's grid), got {grid!r}")
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1:] != (2,) or (pairs.dtype.kind not in "iu" and pairs.size):
        raise ValueError(f"pairs must be int [P, 2] (keyframe_a, keyframe_b), got {pairs.dtype} {pairs.shape}")
    pairs = pairs.astype(np.int64)
    if pairs.size and (pairs.min() < 0 or pairs.max() >= k or (pairs[:, 0] == pairs[:, 1]).any()):
        raise ValueError(f"pairs must index the {k} keyframes with keyframe_a != keyframe_b")
    if len({(int(a), int(b)) for a, b in pairs}) != len(pairs):
        raise ValueError("pairs has a repeated (keyframe_a, keyframe_b) row")
    p, c = len(pairs), int(grid) ** 2 + len(RING)
    dists = {"target": _distribution("target", target, p, c), "pred": _distribution("pred", pred, p, c)}
    if target is None and pred is None:
        raise ValueError("pred and target are both None: nothing to draw")
    if pred_upsampled is not None:
        up = np.asarray(pred_upsampled)
        if pred is None or up.ndim != 3 or len(up) != p or up.dtype.kind != "f" or min(up.shape[1:], default=0) < 1:
            raise ValueError(f"pred_upsampled must be float [P, H', W'] with P = {p}, beside pred, got {up.dtype} {up.shape}")
        if not np.isfinite(up).all() or (up < 0).any():
            raise ValueError("pred_upsampled must be a finite in-view density >= 0 (any scale; it is normalised per pair)")
        pred_upsampled = up.astype(np.float32)
    info = {}
    for name, v in dict(geometry_info).items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"geometry_info keys must be non-empty strings (npz member names), got {name!r}")
        a = np.asarray(v)
        if a.dtype.kind not in "biufcUS":
            raise ValueError(f"geometry_info[{name!r}] must be a numeric or string array (no pickle), got {a.dtype}")
        want = {"extrinsic": (k, 3, 4), "intrinsic": (k, 3, 3)}.get(name)
        if want is not None and a.shape != want:
            raise ValueError(f"geometry_info[{name!r}] must have shape {list(want)}, got {list(a.shape)}")
        info[name] = a
    try:
        summary_bytes = json.dumps(summary, indent=1, sort_keys=True, allow_nan=False, default=_json_default).encode() + b"\n"
    except (TypeError, ValueError) as e:
        raise ValueError(f"summary must be JSON-serialisable without NaN/inf: {e}") from None
    return frames, sel.astype(np.int64), int(grid), pairs, dists, pred_upsampled, info, summary_bytes


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")


def output_names(video: str, n_keyframes: int) -> dict[str, str]:
    """The file name of every output, keyed as ``write_episode_outputs`` returns them."""
    names = {"heatmaps": f"{video}_heatmaps.png"}
    names.update({f"heatmap_{k}": f"{video}_heatmap_{k}.png" for k in range(n_keyframes)})
    names.update(selected_indices=f"{video}_selected_indices.npy", geometry_info=f"{video}_geometry_info.npz",
                 summary=f"{video}_summary.json")
    return names


def write_episode_outputs(
    out_dir: str | os.PathLike,
    video: str,
    *,
    frames: np.ndarray,
    selected_indices: np.ndarray,
    grid: int,
    pairs: np.ndarray,
    target: np.ndarray | None,
    pred: np.ndarray | None,
    pred_upsampled: np.ndarray | None,
    geometry_info: dict[str, np.ndarray],
    summary: dict,
) -> dict[str, Path]:
    """Write one video's pictures and files into ``out_dir``; returns ``output_names``' keys -> paths.

    frames            uint8 [K, H, W, 3] keyframe images, as the model saw them (the grid is over them)
    selected_indices  int [K] source frame index of each keyframe
    grid              G: A's image is split into G x G cells
    pairs             int [P, 2] (keyframe_a, keyframe_b), a != b, each at most once; P may be < K(K-1)
    target, pred      float [P, G*G + 5] distributions (ground truth; predicted probabilities); either may be None
    pred_upsampled    float [P, H', W'] predicted in-view density at image resolution (any scale >= 0,
                      e.g. softmax-ed convex-upsampled logits), drawn in place of pred's cells; or None
    geometry_info     name -> numeric array (``extrinsic`` [K, 3, 4], ``intrinsic`` [K, 3, 3], gains, coverage, ...)
    summary           JSON-serialisable dict (numpy scalars and arrays allowed), written last

    Raises ValueError naming the argument when a shape, dtype or value is wrong; nothing is written then.
    """
    frames, sel, grid, pairs, dists, up, info, summary_bytes = _check(
        video, frames, selected_indices, grid, pairs, target, pred, pred_upsampled, geometry_info, summary)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = output_names(video, len(frames))
    for name in names.values():  # what writers killed mid-write left for these outputs
        sweep_stale_temporaries(out_dir, TMP_PREFIX + name)
    paths = {key: out_dir / name for key, name in names.items()}

    buf = io.BytesIO()
    np.save(buf, sel, allow_pickle=False)
    atomic_write_bytes(paths["selected_indices"], buf.getvalue())
    buf = io.BytesIO()
    np.savez(buf, **info)
    atomic_write_bytes(paths["geometry_info"], buf.getvalue())
    d = _Data(frames, grid, pairs, dists, up)
    atomic_write_bytes(paths["heatmaps"], _heatmaps_png(d, video, sel))
    for k in range(len(frames)):
        atomic_write_bytes(paths[f"heatmap_{k}"], _keyframe_png(d, video, sel, k))
    atomic_write_bytes(paths["summary"], summary_bytes)
    return paths
