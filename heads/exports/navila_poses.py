"""The NaVILA pose sidecar: one JSON object per line, as the integration guide loads it.

    {"video_id": "...", "poses": [[x, y, yaw] x T], "deltas": [[dx, dy, dyaw] x T-1],
     "dist_bins": [T-1 ints], "yaw_bins": [T-1 ints], "step_valid": [T-1 bools]}

Steps touching front padding (``step_valid`` false, including the step from padding to the first
real frame) carry bins of -100, the ignore index of PyTorch's cross-entropy and NaVILA's
``IGNORE_INDEX``, so the integration guide's ``ce_loss`` skips them (docs/navila_integration.md).
``step_valid`` is an extra key: the guide's consumer reads the keys it knows and ignores the rest.

Streamed part by part (memory flat in the number of records), written to a temporary file and
renamed into place, so a killed export never leaves a truncated sidecar that looks complete.
Floats are rounded to 6 decimals (micrometres / microradians) to keep the file compact.

``navcache export navila-poses`` brings the poses cache up to date and reads the source's annotation
ids (the pipeline's work) before calling ``export_navila_poses`` with them (this module reads caches only).
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from navcache.cache_specs.layout import PARTS, STALE_AFTER, TMP_PREFIX, fsync_dir, private_name, sweep_stale_temporaries
from navcache.cache_specs.parts import open_part_data, read_part_meta
from navcache.cache_specs.reader import open_cache
from navcache.cache_specs.specs.poses import IGNORE_INDEX

KEYS = ("poses", "deltas", "dist_bins", "yaw_bins", "step_valid")
BIN_KEYS = ("dist_bins", "yaw_bins")


@dataclass
class ExportReport:
    out: str
    records: int = 0
    annotations_without_poses: list[str] = field(default_factory=list)
    poses_without_annotation: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "out": self.out,
            "records": self.records,
            "annotations_without_poses": {"count": len(self.annotations_without_poses), "ids": self.annotations_without_poses[:50]},
            "poses_without_annotation": {"count": len(self.poses_without_annotation), "ids": self.poses_without_annotation[:50]},
        }


def export_navila_poses(cache_dir: Path, out: Path, annotation_ids: list[str] | None = None) -> ExportReport:
    """Write the sidecar for one split's poses cache; compare with the annotation ids if given."""
    cache = open_cache(cache_dir)  # refuses incomplete caches
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(out)
    tmp = out.parent / private_name(TMP_PREFIX, out.name)
    report = ExportReport(str(out))
    # The index lists episodes sorted by id, so exported ids arrive sorted: compare them with the
    # sorted annotation ids by a streaming merge instead of holding a set of every id. Parts may
    # hold dead rows and interleave in id order: the index says which rows are live, and a few
    # recently used parts stay decoded.
    merge = _SortedDiff(sorted(annotation_ids)) if annotation_ids is not None else None
    parts: OrderedDict[str, dict] = OrderedDict()
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            ok = cache.index.filter(cache.index["status"] == "ok")
            for vid, pid, i in zip(ok["episode_id"], ok["part"], ok["start"]):
                if pid not in parts:
                    parts[pid] = _rounded(cache.path / PARTS / pid)
                    if len(parts) > _OPEN_PARTS:
                        parts.popitem(last=False)
                parts.move_to_end(pid)
                rec = {"video_id": vid, **{k: parts[pid][k][i] for k in KEYS}}
                f.write(json.dumps(rec, separators=(",", ":")))
                f.write("\n")
                if merge is not None:
                    merge.see(vid)
                report.records += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        tmp.unlink(missing_ok=True)
    if merge is not None:
        report.annotations_without_poses, report.poses_without_annotation = merge.finish()
    return report


def sweep_temporaries(out: Path, stale_after: float = STALE_AFTER) -> list[Path]:
    """Delete what killed exports to ``out`` left behind (``.tmp-<out name>-<pid>-<8 hex>``, the
    ``private_name`` this writer uses), by ``sweep_stale_temporaries``'s rule; returns the files removed."""
    return sweep_stale_temporaries(out.parent, TMP_PREFIX + out.name, stale_after)


#: decoded parts kept while streaming (memory flat in the number of records)
_OPEN_PARTS = 4


def _rounded(pdir: Path) -> dict[str, list]:
    """One part's pose arrays as nested lists, floats rounded to 6 decimals, bins -100 off ``step_valid``."""
    data = open_part_data(pdir, read_part_meta(pdir))
    try:
        arrays = {k: np.asarray(data[k][...]) for k in KEYS}
    finally:
        data.close()
    valid = arrays["step_valid"].astype(bool)
    for k in BIN_KEYS:  # whatever the cache's spec version wrote there, padded steps train nothing
        arrays[k] = np.where(valid, arrays[k].astype(np.int64), IGNORE_INDEX)
    return {k: (np.round(v.astype(np.float64), 6) if v.dtype.kind == "f" else v).tolist() for k, v in arrays.items()}


class _SortedDiff:
    """Difference of two sorted id streams: ``ann`` (a list) and ids fed one by one to ``see``."""

    def __init__(self, ann: list[str]):
        self.ann, self.i = ann, 0
        self.only_ann: list[str] = []
        self.only_seen: list[str] = []
        self.last: str | None = None

    def see(self, vid: str) -> None:
        assert self.last is None or vid > self.last, "cache parts must hold episodes in sorted order"
        self.last = vid
        while self.i < len(self.ann) and self.ann[self.i] < vid:
            self.only_ann.append(self.ann[self.i])
            self.i += 1
        if self.i < len(self.ann) and self.ann[self.i] == vid:
            self.i += 1
        else:
            self.only_seen.append(vid)

    def finish(self) -> tuple[list[str], list[str]]:
        self.only_ann += self.ann[self.i :]
        self.i = len(self.ann)
        return self.only_ann, self.only_seen
