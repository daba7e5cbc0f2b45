"""What ``open_cache(...)`` shows about a cache: bytes on disk, rows per part, provenance, class balance.

Pure helpers behind ``CacheReader.summary()``, ``__repr__`` and ``_repr_html_``; each returns
plain JSON-ready values (``navcache inspect --json`` prints them) or short strings.

Sizes are bytes ON DISK: parts are immutable and may hold dead rows (episodes the index no longer
points at) until compaction, so they can exceed what the live rows need.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .labels import LABELS
from .layout import PARTS
from .parts import read_part_meta

#: at most this many parts are listed one by one; more are summarised as min/median/max
FEW_PARTS = 4
#: provenance keys shown first, in this order, never shortened; the rest follow sorted
_PROV_FIRST = ("provider", "id", "revision", "architecture")


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB' (binary units, as ``du -h``)."""
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if x < 1024 or unit == "TiB":
            return f"{int(x)} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    raise AssertionError("unreachable")


def tree_bytes(root: Path) -> int:
    """Sum of the sizes of every regular file under ``root`` (what the cache holds on disk)."""
    total = 0
    for dirpath, _, files in os.walk(root):
        total += sum(os.stat(os.path.join(dirpath, f)).st_size for f in files)
    return total


def _array_of(rel: str, names: set[str]) -> str:
    """The array a part file belongs to: ``data.zarr/<name>/...`` -> name; anything else
    (zarr group metadata, a whole ``data.h5`` holding every array) -> its own bucket."""
    bits = rel.split("/")
    if len(bits) >= 3 and bits[1] in names:
        return bits[1]
    return f"({bits[0]})" if len(bits) == 1 else "(metadata)"


def disk_usage(cache_dir: Path, part_ids: list[str], array_names: list[str]) -> dict:
    """``{"total_bytes", "arrays": {name: bytes}, "parts": {pid: {"rows", "bytes"}}}``.

    ``total_bytes`` walks the cache folder; per-array and per-part bytes add up the ``files``
    sizes each part's ``part.json`` records (the HDF5 backend keeps all arrays in one ``data.h5``,
    reported as the ``(data.h5)`` bucket)."""
    names = set(array_names)
    arrays: dict[str, int] = {n: 0 for n in array_names}
    parts: dict[str, dict] = {}
    for pid in part_ids:
        meta = read_part_meta(cache_dir / PARTS / pid)
        if meta is None:
            parts[pid] = {"rows": None, "bytes": None}
            continue
        size = 0
        for rel, f in meta.get("files", {}).items():
            key = _array_of(rel, names)
            arrays[key] = arrays.get(key, 0) + int(f["size"])
            size += int(f["size"])
        parts[pid] = {"rows": int(meta["n_rows"]), "bytes": size}
    return {"total_bytes": tree_bytes(cache_dir), "arrays": arrays, "parts": parts}


def part_rows_line(parts: Mapping[str, Mapping[str, Any]]) -> str:
    """Rows stored per part: each part when few, else min/median/max over all of them."""
    known = {p: v for p, v in parts.items() if v["rows"] is not None}
    missing = len(parts) - len(known)
    tail = f"; {missing} part(s) missing or damaged" if missing else ""
    if len(known) <= FEW_PARTS:
        each = ", ".join(f"{p} {v['rows']} rows ({human_bytes(v['bytes'])})" for p, v in known.items())
        return f"parts: {each or 'none'}{tail}"
    rows = np.array([v["rows"] for v in known.values()])
    return f"rows per part: min {rows.min()} / median {int(np.median(rows))} / max {rows.max()} over {len(rows)} parts{tail}"


def provenance_lines(prov: Mapping[str, Any]) -> list[str]:
    """One compact line per provenance entry (``encoder``, ``geometry``, ...), e.g.
    ``geometry: provider=vggt id=facebook/VGGT-1B architecture=... (pretrained)``."""
    if not prov:
        return ["provenance: none recorded (no model: values come from the source)"]
    out = []
    for key, val in prov.items():
        if not isinstance(val, Mapping):
            out.append(f"{key}: {_short(val)}")
            continue
        # a random model's note only restates the RANDOM-INIT label printed at the end
        skip = {"random_init", "note"} if "random_init" in val else {"random_init"}
        items = [k for k in _PROV_FIRST if k in val] + sorted(k for k in val if k not in _PROV_FIRST and k not in skip)
        text = " ".join(f"{k}={val[k] if k in _PROV_FIRST else _short(val[k])}" for k in items if val[k] is not None)
        if "random_init" in val:
            text += " (RANDOM-INIT, not pretrained)" if val["random_init"] else " (pretrained)"
        out.append(f"{key}: {text}")
    return out


def _short(v: Any, limit: int = 40) -> str:
    s = str(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def class_balance(spec_arrays: Mapping[str, Mapping[str, Any]], load: Callable[[str], np.ndarray]) -> dict:
    """``{label: {class name: count}}`` over ok episodes, for every per-row integer array named
    like a label vocabulary of ``labels.py`` (``risk``, ``reason``, ``action``)."""
    out = {}
    for name, vocab in LABELS.items():
        a = spec_arrays.get(name)
        if a is None or tuple(a["shape"]) != () or np.dtype(a["dtype"]).kind not in "iu":
            continue
        ids = np.asarray(load(name)).astype(np.int64)
        counts = np.bincount(ids, minlength=len(vocab)) if ids.size else np.zeros(len(vocab), np.int64)
        # an id beyond the vocabulary is shown by number, never dropped
        out[name] = {(vocab[i] if i < len(vocab) else str(i)): int(c) for i, c in enumerate(counts)}
    return out


def balance_line(label: str, counts: Mapping[str, int]) -> str:
    return f"{label}: " + " ".join(f"{k}={v}" for k, v in counts.items())
