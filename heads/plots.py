"""Pictures of training: metric curves from the loop's JSONL files, and confusion matrices.

``heads/train_loop.py`` writes one JSON object per epoch to ``metrics/train_metrics.jsonl`` and
``metrics/val_metrics.jsonl``::

    train: {"epoch", <task.evaluate on train>, "running_<stat>" (batch averages, incl. running_loss
            and running_grad_norm), "time_s"}
    val:   {"epoch", <task.evaluate on val>}

matplotlib is imported inside the functions so importing this module (and ``navcache --help``)
stays fast; figures are written atomically by ``cache_specs.plotting.save_figure``.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from navcache.cache_specs.plotting import new_figure, save_figure
from navcache.heads.console import baseline_target

LOSS_PANEL = "losses"

# sample counts ("n", "n_risk_high", ...) are constant per split: a flat line tells nothing
_COUNT_PREFIX = "n_"


# ----------------------------------------------------------------------------------------------
# training curves


def load_metrics(path: str | os.PathLike) -> tuple[list[dict], int]:
    """(records, n_unreadable) from a metrics JSONL file; a missing file reads as empty.

    Blank lines are skipped. Lines that are not a JSON object (a torn last line after a crash) are
    counted, not raised: a plot of the epochs that did finish is still worth having.
    """
    path = Path(path)
    if not path.exists():
        return [], 0
    records, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad += 1
    return records, bad


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _base(key: str) -> str:
    """The metric a series measures: running_<x> is the batch average of x during training."""
    return key.removeprefix("running_")


def _is_loss(key: str) -> bool:
    b = _base(key)
    return b == "loss" or b.startswith("loss_")


def curve_panels(train: list[dict], val: list[dict], keys: Sequence[str] | None = None) -> dict[str, list[tuple[str, str]]]:
    """Which series go in which panel: {panel title: [(split, key), ...]} in drawing order.

    split is "train" or "val"; key a numeric field of that split's records. All losses (``loss``,
    ``loss_*`` and their ``running_`` batch averages) share the ``LOSS_PANEL``; every other metric
    gets a panel named after it, with its ``running_`` variant in the same panel, and its baselines
    (``base_<kind>_<metric>``, see ``heads.console.baseline_target``) too. Non-numeric fields,
    ``epoch``, ``step`` and sample counts (``n``, ``n_*``) are skipped. ``keys`` (metric names; a name also
    selects its ``running_`` variant) restricts the plot and raises on names found nowhere.
    """
    seen: dict[tuple[str, str], None] = {}  # insertion-ordered set
    for split, records in (("train", train), ("val", val)):
        for rec in records:
            for k, v in rec.items():
                if k not in ("epoch", "step") and _is_number(v):
                    seen[(split, k)] = None
    series = list(seen)
    if keys is not None:
        wanted = set(keys)
        missing = wanted - {k for _, k in series} - {_base(k) for _, k in series}
        if missing and (train or val):
            raise ValueError(f"no numeric metric named {sorted(missing)}; have {sorted({k for _, k in series})}")
        series = [(s, k) for s, k in series if k in wanted or _base(k) in wanted]
    else:
        series = [(s, k) for s, k in series if not (_base(k) == "n" or _base(k).startswith(_COUNT_PREFIX))]

    names = {_base(k) for _, k in series}
    panels: dict[str, list[tuple[str, str]]] = {}
    for split, k in series:
        target = baseline_target(k, names)  # a baseline joins its metric's panel, drawn as a flat dashed line
        panels.setdefault(LOSS_PANEL if _is_loss(k) else target[0] if target else _base(k), []).append((split, k))
    if LOSS_PANEL in panels:  # losses first: they are what one looks at first
        panels = {LOSS_PANEL: panels.pop(LOSS_PANEL), **panels}
    return panels


def _series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs [n], values [n]) of one key, sorted by epoch; non-finite values become gaps (NaN)."""
    pts = []
    for i, rec in enumerate(records):
        v = rec.get(key)
        if _is_number(v):
            # a record without an epoch still gets a place: its line number, 1-based like epochs
            e = rec.get("epoch", i + 1)
            pts.append((float(e) if _is_number(e) else i + 1.0, float(v) if math.isfinite(v) else math.nan))
    pts.sort(key=lambda p: p[0])
    a = np.array(pts, dtype=np.float64).reshape(-1, 2)
    return a[:, 0], a[:, 1]


_STYLE = {("train", False): "-", ("train", True): ":", ("val", False): "--"}


def training_curves(train_jsonl: str | os.PathLike, val_jsonl: str | os.PathLike, out: str | os.PathLike,
                    keys: Sequence[str] | None = None) -> Path:
    """Every metric over epochs, train vs val, one small panel each (all losses share one panel).

    Line style says where a value comes from: solid = evaluation on train, dashed = val, dotted =
    running batch average during training (dropout on, weights moving). Colour says which metric;
    grey lines are the metric's baselines (``base_*``: dashed val, dotted train), in its own panel.
    Legends sit below their panel, off the curves. A missing or empty file contributes nothing; with no records at all the PNG says so.
    Raises FileNotFoundError when ``train_jsonl`` does not exist (the loop always writes it, so a
    missing one is a wrong path); ``val_jsonl`` may be missing.
    """
    if not Path(train_jsonl).exists():
        raise FileNotFoundError(f"no training metrics at {train_jsonl}")
    train, bad_t = load_metrics(train_jsonl)
    val, bad_v = load_metrics(val_jsonl)
    panels = curve_panels(train, val, keys)
    by_split = {"train": train, "val": val}

    ncols = max(1, min(3, len(panels)))
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig = new_figure(380 * ncols, 290 * nrows + 40)
    fig.set_layout_engine("constrained")
    note = f" ({bad_t + bad_v} unreadable line(s) skipped)" if bad_t + bad_v else ""
    run = Path(train_jsonl).parent
    run = run.parent if run.name == "metrics" else run  # the loop's layout: <run>/metrics/*.jsonl
    fig.suptitle(f"training curves: {run}{note}", fontsize=10)
    if not panels:
        fig.text(0.5, 0.5, "no metrics recorded yet", ha="center", va="center", fontsize=12, color="#888888")
        return save_figure(fig, out)

    from matplotlib.ticker import MaxNLocator

    axes = fig.subplots(nrows, ncols, squeeze=False)
    colours = [f"C{i}" for i in range(10)]
    for ax, (name, series) in zip(axes.flat, panels.items()):
        colour_of: dict[str, str] = {}
        base_colour: dict[str, str] = {}
        values = []
        for split, key in series:
            x, y = _series(by_split[split], key)
            if name != LOSS_PANEL and key.startswith("base_"):
                kind = key.removeprefix("base_").split("_", 1)[0]
                _baseline_line(ax, split, key, x, y, base_colour.setdefault(kind, BASELINE_COLOURS[len(base_colour) % len(BASELINE_COLOURS)]))
                values.append(y)
                continue
            colour = colour_of.setdefault(_base(key), colours[len(colour_of) % len(colours)])
            label = f"{split} {key}" if name == LOSS_PANEL else f"{split}{' (running)' if key != _base(key) else ''}"
            ax.plot(x, y, _STYLE[(split, key != _base(key))], color=colour, marker="o" if len(x) < 30 else None, ms=2.5, lw=1.2, label=label)
            values.append(y)
        v = np.concatenate(values)
        v = v[np.isfinite(v)]
        if name == LOSS_PANEL and len(v) and v.min() > 0 and v.max() / v.min() > 20:
            ax.set_yscale("log")  # losses spanning decades: the late epochs would be a flat line
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        # below the axes, never over the curves; constrained layout makes room for it
        ax.legend(fontsize=6 if name == LOSS_PANEL else 7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncols=2, frameon=False)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    return save_figure(fig, out)


BASELINE_COLOURS = ("#666666", "#a0522d", "#808000")  # one per baseline kind in a panel (majority, repeat, ...)


def _baseline_line(ax, split: str, key: str, x: np.ndarray, y: np.ndarray, colour: str) -> None:
    """A baseline (constant per split in practice) as a thin line in its metric's panel: dashed for
    val, dotted for train; a single value as a horizontal line across the panel."""
    style = "--" if split == "val" else ":"
    label = f"{split} {key.removeprefix('base_').split('_', 1)[0]} baseline"
    finite = y[np.isfinite(y)]
    if len(finite) and np.ptp(finite) == 0:
        ax.axhline(float(finite[0]), ls=style, color=colour, lw=1.0, label=label, gid=f"baseline:{split}:{key}")
    else:
        ax.plot(x, y, style, color=colour, lw=1.0, label=label, gid=f"baseline:{split}:{key}")


# ----------------------------------------------------------------------------------------------
# confusion matrices


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """int64 [C, C] counts: row = true class, column = predicted class. Sums to N.

    y_true, y_pred: int [N] in 0..C-1 (anything else raises: a silently dropped label would make
    the matrix look better than the model).
    """
    y_true, y_pred = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in length")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if len(y) and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"{name} must hold integers in 0..{n_classes - 1}, got {y.dtype} in [{y.min()}, {y.max()}]")
    flat = y_true.astype(np.int64) * n_classes + y_pred.astype(np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes).astype(np.int64)


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], out: str | os.PathLike, title: str = "") -> Path:
    """The matrix as a heat map: colour = fraction of the true row, text = raw count.

    Rows are normalised so a rare class reads as clearly as a common one; row totals sit next to
    the class names. Rows with no samples stay white.
    """
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"matrix must be square [C, C], got {m.shape}")
    c = m.shape[0]
    if len(class_names) != c:
        raise ValueError(f"{len(class_names)} class names for a {c}-class matrix")
    totals = m.sum(1)
    frac = np.divide(m, totals[:, None], out=np.zeros(m.shape, np.float64), where=totals[:, None] > 0)

    side = max(420, 50 * c + 220)  # 50 px per cell, plus room for names and the colour bar
    fig = new_figure(side + 90, side)
    fig.set_layout_engine("constrained")  # long class names push the cells in, never off the edge
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fontsize = max(5, min(10, 120 // max(c, 1)))
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=fontsize, color="white" if frac[i, j] > 0.55 else "black")
    ax.set_xticks(range(c), [str(n) for n in class_names], rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticks(range(c), [f"{n} (n={int(t)})" for n, t in zip(class_names, totals)], fontsize=fontsize)
    ax.set_xlabel("predicted", fontsize=9)
    ax.set_ylabel("true", fontsize=9)
    ax.set_title(title or f"confusion ({int(m.sum())} samples)", fontsize=10)
    bar = fig.colorbar(im, ax=ax, shrink=0.8)
    bar.set_label("fraction of true row", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return save_figure(fig, out)
