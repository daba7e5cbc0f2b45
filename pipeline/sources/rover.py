"""Rover clips: one short video per row of a parquet table, with telemetry and risk labels.

Table ``{split}.parquet`` under ``root``; required columns ``clip_id``, ``video`` (path relative to
root), ``fps``, ``telemetry`` (8 floats, ``cache_specs.labels.TELEMETRY_FIELDS``), ``risk``,
``reason``, ``action`` (strings from ``cache_specs.labels``); optional ``n_frames`` (int; when
present, the decoded count must match it) and ``weight`` (float >= 0, default 1.0).
Each clip is decoded at ``num_frames`` uniformly spread frames, first and last included.
The table and the videos resolve under ``root`` (symlinks followed) unless ``allow_outside_root``
is set; a string cell that is not valid UTF-8 quarantines its row, not the table.

Listing looks at each clip's file without decoding it (a stat, and the mp4's top-level box
headers): a missing, empty, truncated or non-file clip quarantines its row there, for every stage.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from navcache.cache_specs.labels import LABELS, TELEMETRY_FIELDS
from navcache.pipeline.decode import VIDEO_MEMO_BYTES, DecodedVideoFrames, check_file, check_iso_bmff_complete
from navcache.pipeline.errors import DatasetError, Quarantine
from navcache.pipeline.safepaths import UnsafePath, resolve_under
from navcache.pipeline.sampling import uniform_indices
from navcache.pipeline.sources.base import Episode, Frames, claim_id
from navcache.pipeline.sources.fields import declared_record
from navcache.pipeline.sources.options import RoverOptions, build_options

__all__ = ["RoverSource", "REQUIRED_COLUMNS", "OPTIONAL_COLUMNS"]

REQUIRED_COLUMNS: tuple[str, ...] = ("clip_id", "video", "fps", "telemetry", "risk", "reason", "action")
OPTIONAL_COLUMNS: tuple[str, ...] = ("n_frames", "weight")


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class _BadText:
    """A string cell whose bytes are not UTF-8 (Arrow does not validate on write): the row holding
    it is quarantined with ``reason`` instead of the whole table failing to convert."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self) -> str:
        return f"<{self.reason}>"


def _text_cells(column: pa.ChunkedArray) -> list[str | None | _BadText]:
    """A string column's cells, decoded one by one (``to_pylist`` fails the whole column on one)."""
    out: list[str | None | _BadText] = []
    for raw in column.cast(pa.large_binary()).to_pylist():  # a view of the same bytes: never fails
        try:
            out.append(None if raw is None else raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            out.append(_BadText(f"not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 4]!r})"))
    return out


def _columns(table: pa.Table, path: Path) -> dict[str, list[Any]]:
    """The known columns as Python lists; DatasetError naming the file for one that cannot be read."""
    columns = {}
    for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS):
        if c not in table.column_names:
            continue
        column = table.column(c)
        try:
            columns[c] = column.to_pylist()
        except (pa.ArrowException, UnicodeDecodeError, ValueError) as e:
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                columns[c] = _text_cells(column)  # some cell is not UTF-8: find which, row by row
                continue
            raise DatasetError(f"{path}: column {c!r} cannot be read: {type(e).__name__}: {e}") from None
    return columns


def _read_table(path: Path) -> pa.Table:
    """The parquet table at ``path``; DatasetError naming the file if it is absent or unreadable."""
    if not path.is_file():
        raise DatasetError(f"rover table not found: {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable parquet table: {e}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise DatasetError(
            f"{path}: missing required column(s) {', '.join(missing)} "
            f"(has {', '.join(table.column_names) or 'no columns'})"
        )
    return table


class RoverSource:
    """Source of kind ``rover``; see the module docstring for the table layout."""

    kind = "rover"
    Options = RoverOptions
    #: see ``pipeline/sources/fields.py``; the clip is ``files[0]`` (content-hashed), ``video`` its
    #: name, ``n_frames`` the count the decoder must find. The string labels only name the ids.
    record_fields = {
        "frames": ("video", "n_frames"),
        "labels": ("telemetry", "risk_id", "reason_id", "action_id", "weight"),
    }

    def __init__(self, root: Path, **options: Any):
        """``options``: the fields of ``RoverOptions`` (ConfigError naming a bad one)."""
        self.root = Path(root)
        self.options = o = build_options(self.kind, options)
        self.table, self.num_frames = o.table, o.num_frames
        #: video frames decoded this run (rows naming one clip, stages reading the same clip): each once
        self.decoded = DecodedVideoFrames(VIDEO_MEMO_BYTES)

    # ------------------------------------------------------------------------------ listing

    def episodes(self, split: str) -> list[Episode]:
        """One Episode per table row, sorted by episode_id; bad rows are quarantined.

        Raises DatasetError when the table is missing, unreadable or lacks required columns.
        """
        try:
            path = resolve_under(self.root, self.table.format(split=split), self.options.allow_outside_root)
        except UnsafePath as e:
            raise DatasetError(f"rover option 'table' for split {split!r}: {e}") from None
        table = _read_table(path)
        columns = _columns(table, path)
        seen: dict[str, int] = {}
        episodes = []
        for i in range(table.num_rows):
            row = {c: values[i] for c, values in columns.items()}
            episodes.append(self._episode(i, row, path.name, seen))
        episodes.sort(key=lambda ep: ep.episode_id)
        return episodes

    def _episode(self, i: int, row: dict[str, Any], table_name: str, seen: dict[str, int]) -> Episode:
        where = f"{table_name} row #{i}"
        placeholder = f"<row #{i}>"
        clip = row["clip_id"]

        def bad(episode_id: str, reason: str) -> Episode:
            return Episode(episode_id, {"row_index": i, **_jsonable(row)}, (), f"{where}: {reason}")

        bad_text = [c for c, v in row.items() if isinstance(v, _BadText)]
        if bad_text:
            usable_id = not isinstance(clip, _BadText) and claim_id(clip, "clip_id", seen, i, item="row") is None
            return bad(clip if usable_id else placeholder, "; ".join(f"{c!r}: {row[c].reason}" for c in bad_text))
        refused = claim_id(clip, "clip_id", seen, i, item="row")
        if refused:
            return bad(placeholder, refused)

        try:
            video_path = resolve_under(self.root, row["video"], self.options.allow_outside_root)
        except UnsafePath as e:
            return bad(clip, f"unsafe 'video' path: {e}")

        fps = row["fps"]
        if not _is_real(fps) or not math.isfinite(fps) or fps <= 0:
            return bad(clip, f"'fps' must be a finite number > 0, got {fps!r}")

        n_frames = row.get("n_frames")
        if isinstance(n_frames, float) and (math.isnan(n_frames) or n_frames.is_integer()):
            # pandas stores an int column with nulls as float64: 30.0 means 30, NaN means unknown.
            n_frames = None if math.isnan(n_frames) else int(n_frames)
        if n_frames is not None and (isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < 1):
            return bad(clip, f"'n_frames' must be an integer >= 1, got {n_frames!r}")

        telemetry = row["telemetry"]
        if (
            not isinstance(telemetry, (list, tuple))
            or len(telemetry) != len(TELEMETRY_FIELDS)
            or not all(_is_real(v) and math.isfinite(v) for v in telemetry)
        ):
            return bad(
                clip,
                f"'telemetry' must be {len(TELEMETRY_FIELDS)} finite numbers "
                f"[{', '.join(TELEMETRY_FIELDS)}], got {telemetry!r}",
            )

        label_ids = {}
        for field, vocab in LABELS.items():
            value = row[field]
            if value not in vocab:
                return bad(clip, f"unknown {field} label {value!r}; valid: {', '.join(vocab)}")
            label_ids[field] = vocab.index(value)

        weight = row.get("weight")
        if weight is None:
            weight = 1.0  # absent column or null cell: the row counts once
        elif not _is_real(weight) or not math.isfinite(weight) or weight < 0:
            return bad(clip, f"'weight' must be a finite number >= 0, got {weight!r}")

        problem = _file_problem(video_path)  # last: a row's own errors are named first
        if problem:
            return bad(clip, problem)

        record = {
            "video": row["video"],
            "fps": float(fps),
            "n_frames": n_frames,
            "telemetry": [float(v) for v in telemetry],
            "risk": row["risk"],
            "reason": row["reason"],
            "action": row["action"],
            "risk_id": label_ids["risk"],
            "reason_id": label_ids["reason"],
            "action_id": label_ids["action"],
            "weight": float(weight),
        }
        return Episode(clip, record, (video_path,), None)

    # ------------------------------------------------------------------------------ decoding

    def read_frames(self, episode: Episode, indices: Sequence[int] | None = None, *, resize_to: tuple[int, int] | None = None,
                    fit: bool = False) -> Frames:
        """``num_frames`` frames at ``uniform_indices(n, num_frames)`` (or ``indices``); video
        frames come at full size, or with ``fit`` from the decoder's scaler reduced towards
        ``resize_to`` (``Source.read_frames``).

        pixels uint8 [T, H, W, 3] RGB, no padding. Raises Quarantine for a quarantined episode, a
        damaged video, a frame count other than the ``n_frames`` column, or a clip shorter than
        ``num_frames``.
        """
        if episode.quarantine is not None:
            raise Quarantine(episode.quarantine)
        (path,) = episode.files
        expected = declared_record(self, episode, ("frames",)).get("n_frames")
        chosen: list[int] = []

        def sample(n: int) -> Sequence[int]:
            if indices is not None:
                chosen[:] = [int(k) for k in indices]
            elif n < self.num_frames:
                raise Quarantine(f"{episode.episode_id}: clip {path} has {n} frames, fewer than num_frames={self.num_frames}")
            else:
                chosen[:] = uniform_indices(n, self.num_frames).tolist()
            return chosen

        pixels, _ = self.decoded.read_sampled(path, sample, expected_frames=expected, reduce_to=resize_to if fit else None)
        idx = np.asarray(chosen, dtype=np.int64)
        return Frames(pixels=pixels, indices=idx, padded=np.zeros(len(idx), dtype=bool))


def _file_problem(path: Path) -> str | None:
    """Why the clip's file cannot be decoded, as far as its directory entry and mp4 box headers
    tell (missing, a folder, empty, truncated, no index); None if they look whole.

    Found here, at listing, the problem quarantines the episode in every stage of the dataset,
    ``rover-meta`` (which never opens the clip) included, so all its indexes list it with this
    one reason. Damage only decoding reveals is still the decoding stage's to quarantine.
    """
    try:
        check_iso_bmff_complete(path, check_file(path, "video"))
    except Quarantine as e:
        return e.reason
    except OSError as e:  # unreadable (permissions, I/O error)
        return f"cannot read video file {path}: {e.strerror or e}"
    return None


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """A quarantined row's cells as JSON-able values (NaN/inf become strings)."""
    out = {}
    for k, v in row.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = repr(v)
        elif isinstance(v, (list, tuple)):
            out[k] = [repr(x) if isinstance(x, float) and not math.isfinite(x) else x for x in v]
        elif v is None or isinstance(v, (str, int, float, bool)):
            out[k] = v
        else:
            out[k] = repr(v)
    return out
