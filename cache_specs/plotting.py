"""Writing figures: a pixel-sized matplotlib Figure on an Agg canvas, saved atomically as PNG.

The basics every picture in ``pipeline`` and ``heads`` uses. matplotlib is imported inside the
functions, never at module level, so importing this (and ``navcache --help``) stays fast; figures
are ``matplotlib.figure.Figure`` objects on an Agg canvas (no pyplot global state).
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

DPI = 100  # picture layouts are in PNG pixels, so figure inches are pixels / DPI


def new_figure(width_px: float, height_px: float) -> Any:
    """A ``matplotlib.figure.Figure`` of that many pixels at ``DPI``, on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # +1e-3: Agg truncates width * dpi to an int, and px / 100 * 100 may land just below px
    fig = Figure(figsize=((width_px + 1e-3) / DPI, (height_px + 1e-3) / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, out: str | os.PathLike, dpi: float | None = None) -> Path:
    """Write ``fig`` as PNG to ``out`` atomically; returns ``out`` as a Path.

    The PNG goes to a hidden temp file in the same folder (same filesystem, so ``os.replace`` is
    atomic), then replaces ``out``: readers see the old picture or the new one, never a torn one.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # plain open() (not mkstemp) so the PNG gets the usual umask permissions, not 0600
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi or fig.dpi, facecolor=fig.get_facecolor())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
