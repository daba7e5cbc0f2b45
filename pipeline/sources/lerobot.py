"""LeRobot datasets (huggingface/lerobot), format v3.0 and v2.1, from a local folder.

``meta/info.json`` decides what exists: ``codebase_version``, ``fps``, ``splits`` (``"first:end"``
episode ranges; a split it lacks is refused with the valid names), ``data_path``/``video_path``
templates and ``features``, whose ``video`` and ``image`` entries are the cameras (images stored
in the parquet as encoded bytes, ``{"bytes", "path"}``). Episodes come from
``meta/episodes/**/*.parquet`` (v3.0: ``data/chunk_index``, ``data/file_index``,
``dataset_from_index``/``dataset_to_index``, ``videos/<key>/{chunk_index, file_index,
from_timestamp, to_timestamp}``, several episodes per data and video file) or
``meta/episodes.jsonl`` (v2.1: one parquet and one mp4 per camera per episode); tasks from
``meta/tasks.parquet`` (the task text is the pandas index, or a ``task`` column) or
``meta/tasks.jsonl``. Episode ids are ``episode_{index:06d}``.

Listing reads the small columns of the frame tables (indices, timestamps, task ids, state and
action; never images) and each video's header, and quarantines an episode, with the reason, when:
its rows are missing, not contiguous, or their ``frame_index`` is not 0..n-1; consecutive
timestamps are not 1/fps apart (within ``tolerance_s``); a ``task_index`` names no task; a state
or action value is NaN/inf; a file is missing; a video's codec cannot be decoded here or the video
ends before the episode's ``to_timestamp``. A dataset without a readable ``info.json`` (or of
another version) is refused with a DatasetError. Decoding (``read_frames``) seeks to the episode's
segment of the shared file, decodes it once, and serves each table timestamp by the nearest
frame within ``tolerance_s``, as LeRobotDataset does; any other outcome is a Quarantine.
"""
from __future__ import annotations

import json
import math
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from navcache.pipeline.decode import VIDEO_MEMO_BYTES, DecodedVideoFrames
from navcache.pipeline.errors import DatasetError, Quarantine
from navcache.pipeline.safepaths import UnsafePath, resolve_under
from navcache.pipeline.sampling import uniform_indices
from navcache.pipeline.sources.base import Episode, Frames
from navcache.pipeline.sources.fields import declared_record
from navcache.pipeline.sources.options import LeRobotOptions, build_options
from navcache.pipeline.video_reader import StrictVideoReader

__all__ = ["LeRobotSource", "VERSIONS", "STATE", "ACTION"]

VERSIONS = ("v2.1", "v3.0")
STATE, ACTION = "observation.state", "action"
_TABLE_COLUMNS = ("episode_index", "frame_index", "timestamp", "task_index", "index", STATE, ACTION)


def _fail(root: Path, what: str) -> DatasetError:
    return DatasetError(f"LeRobot dataset {root}: {what}")


class LeRobotSource:
    """Source of kind ``lerobot``; see the module docstring."""

    kind = "lerobot"
    Options = LeRobotOptions
    #: see ``pipeline/sources/fields.py``: files[0] is the frame table, then the videos
    record_fields = {
        "frames": ("data", "rows", "length", "fps", "videos", "images"),
        "labels": ("data", "rows", "length", "fps", "episode_index", "task", "task_index", "state_dim", "action_dim"),
    }

    def __init__(self, root: Path, **options: Any):
        self.root = Path(root)
        self.options = build_options(self.kind, options)
        #: camera frames served this run (frame-features, geometry, spatial reading one episode): each segment decoded once
        self.decoded = DecodedVideoFrames(VIDEO_MEMO_BYTES)

    # ------------------------------------------------------------------------------ metadata

    def _path(self, rel: str) -> Path:
        try:
            return resolve_under(self.root, rel, self.options.allow_outside_root)
        except UnsafePath as e:
            raise Quarantine(f"unsafe path {rel!r}: {e}") from None

    @cached_property
    def info(self) -> dict:
        path = self.root / "meta" / "info.json"
        if not path.is_file():
            raise _fail(self.root, "no meta/info.json; a LeRobot dataset (v2.1 or v3.0) has one")
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise _fail(self.root, f"meta/info.json cannot be read: {e}") from None
        if not isinstance(info, dict) or info.get("codebase_version") not in VERSIONS:
            got = info.get("codebase_version") if isinstance(info, dict) else None
            raise _fail(self.root, f"codebase_version {got!r} is not supported (valid: {', '.join(VERSIONS)})")
        fps = info.get("fps")
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0 or not isinstance(info.get("features"), dict):
            raise _fail(self.root, "meta/info.json needs 'fps' > 0 and a 'features' mapping")
        return info

    @property
    def version(self) -> str:
        return self.info["codebase_version"]

    @property
    def fps(self) -> float:
        return float(self.info["fps"])

    @property
    def cameras(self) -> tuple[str, ...]:
        """Every camera key, in info.json's order (video and image features)."""
        return tuple(k for k, f in self.info["features"].items() if isinstance(f, dict) and f.get("dtype") in ("video", "image"))

    @property
    def camera(self) -> str:
        """The camera ``read_frames`` serves (option ``camera``, else the first)."""
        cams = self.cameras
        if not cams:
            raise _fail(self.root, "info.json features hold no camera (no 'video' or 'image' feature)")
        cam = self.options.camera or cams[0]
        if cam not in cams:
            raise _fail(self.root, f"option camera {cam!r} is not a camera of this dataset (valid: {', '.join(cams)})")
        return cam

    def robot_dims(self) -> dict[str, int]:
        """{"S": state size, "A": action size} from info.json (0 where the feature is absent)."""
        return {"S": _dim(self.info["features"].get(STATE)), "A": _dim(self.info["features"].get(ACTION))}

    def _tasks(self) -> dict[int, str]:
        meta = self.root / "meta"
        try:
            if self.version == "v3.0":
                table = pq.read_table(meta / "tasks.parquet")
                text = "task" if "task" in table.column_names else _pandas_index(table)
                return dict(zip(table.column("task_index").to_pylist(), table.column(text).to_pylist()))
            rows = [json.loads(line) for line in (meta / "tasks.jsonl").read_text().splitlines() if line.strip()]
            return {int(r["task_index"]): str(r["task"]) for r in rows}
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as e:
            raise _fail(self.root, f"the task table cannot be read: {type(e).__name__}: {e}") from None

    def _episode_rows(self) -> list[dict]:
        meta = self.root / "meta"
        try:
            if self.version == "v3.0":
                files = sorted((meta / "episodes").rglob("*.parquet"))
                if not files:
                    raise FileNotFoundError("meta/episodes/ holds no parquet file")
                rows = []
                for f in files:
                    t = pq.read_table(f)
                    rows += t.select([c for c in t.column_names if not c.startswith("stats/")]).to_pylist()
                return rows
            return [json.loads(line) for line in (meta / "episodes.jsonl").read_text().splitlines() if line.strip()]
        except (OSError, ValueError, pa.ArrowException) as e:
            raise _fail(self.root, f"the episode table cannot be read: {type(e).__name__}: {e}") from None

    # ------------------------------------------------------------------------------ listing

    def episodes(self, split: str) -> list[Episode]:
        """The episodes of ``split`` (info.json ``splits``), sorted by id; bad ones quarantined."""
        splits = self.info.get("splits") or {}
        if split not in splits:
            raise _fail(self.root, f"no split {split!r} in info.json (valid: {', '.join(sorted(splits)) or 'none'})")
        try:
            first, end = (int(x) for x in str(splits[split]).split(":"))
        except ValueError:
            raise _fail(self.root, f"split {split!r} is {splits[split]!r}, expected 'first:end'") from None
        tasks = self._tasks()
        rows = {int(r["episode_index"]): r for r in self._episode_rows() if first <= int(r["episode_index"]) < end}
        tables: dict[str, dict | str] = {}
        videos: dict[str, tuple[str | None, float]] = {}
        out = [self._episode(e, rows.get(e), tasks, tables, videos) for e in range(first, end)]
        return sorted(out, key=lambda ep: ep.episode_id)

    def _episode(self, e: int, row: dict | None, tasks: dict, tables: dict, videos: dict) -> Episode:
        eid = f"episode_{e:06d}"
        if row is None:
            return Episode(eid, {"episode_index": e}, (), "the split names this episode, the episode table does not")
        try:
            record, files = self._record(e, row, tasks, tables, videos)
        except Quarantine as q:
            return Episode(eid, {"episode_index": e}, (), q.reason)
        return Episode(eid, record, files, None)

    def _record(self, e: int, row: dict, tasks: dict, tables: dict, videos: dict) -> tuple[dict, tuple[Path, ...]]:
        n = int(row["length"])
        chunk = e // int(self.info.get("chunks_size", 1000))
        if self.version == "v3.0":
            data_rel = self.info["data_path"].format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
        else:
            data_rel = self.info["data_path"].format(episode_chunk=chunk, episode_index=e)
        data = self._path(data_rel)
        if data_rel not in tables:
            tables[data_rel] = _read_small_columns(data)
        table = tables[data_rel]
        if isinstance(table, str):
            raise Quarantine(table)
        a, b = _rows_of(table, e, n)
        task_ids = _check_table(table, a, b, e, self.fps, self.options.tolerance_s, tasks)
        rec_videos, files = {}, [data]
        for key in self.cameras:
            if self.info["features"][key]["dtype"] != "video":
                continue
            if self.version == "v3.0":
                rel = self.info["video_path"].format(video_key=key, chunk_index=row[f"videos/{key}/chunk_index"], file_index=row[f"videos/{key}/file_index"])
                start, stop = float(row[f"videos/{key}/from_timestamp"]), float(row[f"videos/{key}/to_timestamp"])
            else:
                rel = self.info["video_path"].format(video_key=key, episode_chunk=chunk, episode_index=e)
                start, stop = 0.0, n / self.fps
            path = self._path(rel)
            if rel not in videos:
                videos[rel] = _probe_video(path)
            problem, duration = videos[rel]
            if problem is not None:
                raise Quarantine(f"{key}: {problem}")
            if duration + self.options.tolerance_s < stop:
                raise Quarantine(f"{key}: video {rel} ends at {duration:.4f} s, before the episode's to_timestamp {stop:.4f} s")
            rec_videos[key] = [rel, start, stop]
            files.append(path)
        record = {"episode_index": e, "length": n, "fps": self.fps, "data": data_rel, "rows": [a, b], "videos": rec_videos,
                  "images": [k for k in self.cameras if self.info["features"][k]["dtype"] == "image"],
                  "task_index": task_ids[0], "task": tasks[task_ids[0]],
                  "state_dim": _dim(self.info["features"].get(STATE)), "action_dim": _dim(self.info["features"].get(ACTION))}
        return record, tuple(files)

    # ------------------------------------------------------------------------------ reading

    def read_table(self, episode: Episode) -> dict[str, np.ndarray]:
        """The episode's frame table: ``state`` float32 [n, S] and ``action`` float32 [n, A] (absent
        when info.json has no such feature), ``timestamp`` float64 [n], ``frame_index``,
        ``task_index`` int64 [n]. Quarantine when the file changed since listing."""
        if episode.quarantine is not None:
            raise Quarantine(episode.quarantine)
        rec = declared_record(self, episode, ("labels",))
        table = _read_small_columns(self._path(rec["data"]))
        if isinstance(table, str):
            raise Quarantine(table)
        a, b = rec["rows"]
        out = {k: table[k][a:b] for k in ("timestamp", "frame_index", "task_index")}
        for name, key in (("state", STATE), ("action", ACTION)):
            if key in table:
                out[name] = table[key][a:b].astype(np.float32)
        if len(out["timestamp"]) != rec["length"]:
            raise Quarantine(f"{rec['data']}: the table changed since listing ({len(out['timestamp'])} rows, {rec['length']} expected)")
        return out

    def read_frames(self, episode: Episode, indices: Sequence[int] | None = None, *, resize_to: tuple[int, int] | None = None,
                    fit: bool = False) -> Frames:
        """``num_frames`` frames of ``camera`` at ``uniform_indices(length, num_frames)`` (or
        ``indices``, frame indices within the episode) as uint8 [T, H, W, 3] RGB at stored size
        (``resize_to`` and ``fit`` are hints this source does not use: its videos are decoded as
        whole segments)."""
        n = declared_record(self, episode, ("frames",))["length"]
        idx = [int(k) for k in indices] if indices is not None else uniform_indices(n, min(self.options.num_frames, n)).tolist()
        pixels = self.read_camera(episode, self.camera, idx)
        return Frames(pixels=pixels, indices=np.asarray(idx, np.int64), padded=np.zeros(len(idx), bool))

    def read_camera(self, episode: Episode, key: str, indices: Sequence[int]) -> np.ndarray:
        """Frames ``indices`` (within the episode) of camera ``key`` -> uint8 [K, H, W, 3] RGB."""
        if episode.quarantine is not None:
            raise Quarantine(episode.quarantine)
        rec = declared_record(self, episode, ("frames",))
        n, (a, _) = rec["length"], rec["rows"]
        if any(not 0 <= i < n for i in indices):
            raise ValueError(f"frame indices must lie in [0, {n}) for {episode.episode_id}")
        if key in rec["images"]:
            return _decode_images(self._path(rec["data"]), key, [a + i for i in indices])
        if key not in rec["videos"]:
            raise ValueError(f"{key!r} is not a camera of {episode.episode_id} (cameras: {', '.join([*rec['videos'], *rec['images']])})")
        rel, start, stop = rec["videos"][key]
        # the frame served for index i follows from the video's bytes, the segment and the table's timestamps
        content, table_content = self.decoded.content(self._path(rel)), self.decoded.content(self._path(rec["data"]))
        keys = [(content, table_content, float(start), float(stop), int(i)) for i in indices] if content and table_content else []
        hit = self.decoded.lookup(keys) if keys else None
        if hit is not None:  # this segment of these bytes was decoded and matched earlier in the run
            return hit
        table = _read_small_columns(self._path(rec["data"]))
        if isinstance(table, str):
            raise Quarantine(table)
        ts = table["timestamp"][a:a + n]
        tol = self.options.tolerance_s
        self.decoded.count_pass()
        with StrictVideoReader(self._path(rel)) as reader:
            times, frames = reader.segment(start, stop, margin=0.5 / rec["fps"])
        if len(times) != n:
            raise Quarantine(f"{key}: video {rel} holds {len(times)} frames in [{start:.4f}, {stop:.4f}) s, the table {n}")
        out = np.empty((len(indices), *frames.shape[1:]), np.uint8)
        for j, i in enumerate(indices):
            want = start + float(ts[i])
            k = int(np.argmin(np.abs(times - want)))
            if abs(times[k] - want) > tol:
                raise Quarantine(f"{key}: frame {i} (t = {want:.4f} s in {rel}) cannot be served: the nearest decoded frame is at "
                                 f"{times[k]:.4f} s, beyond tolerance_s = {tol:g}")
            out[j] = frames[k]
        if keys:
            self.decoded.store(keys, out)
        return out


# ---------------------------------------------------------------------------------- helpers


def _pandas_index(table: pa.Table) -> str:
    """The column pandas wrote its index to (LeRobot's tasks.parquet keeps the task text there)."""
    meta = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}"))
    names = [c for c in meta.get("index_columns", []) if isinstance(c, str)]
    if not names:
        raise KeyError("tasks.parquet has neither a 'task' column nor a pandas index holding the task text")
    return names[0]


def _dim(feature: Any) -> int:
    shape = feature.get("shape") if isinstance(feature, dict) else None
    return int(np.prod(shape)) if shape else 0


def _read_small_columns(path: Path) -> dict[str, np.ndarray] | str:
    """The index, timestamp, task, state and action columns of a frame table, or why they cannot be read."""
    if not path.is_file():
        return f"frame table {path.name} is missing"
    try:
        pf = pq.ParquetFile(path)
        names = [c for c in _TABLE_COLUMNS if c in pf.schema_arrow.names]
        table = pf.read(columns=names)
    except (OSError, pa.ArrowException) as e:
        return f"frame table {path.name} cannot be read: {type(e).__name__}"
    missing = [c for c in ("episode_index", "frame_index", "timestamp", "task_index") if c not in names]
    if missing:
        return f"frame table {path.name} lacks column(s) {', '.join(missing)}"
    out = {}
    for c in names:
        col = table.column(c).combine_chunks()
        if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
            out[c] = _list_column(col)
        else:
            out[c] = col.to_numpy(zero_copy_only=False)
    return out


def _list_column(col: pa.Array) -> np.ndarray:
    """A list column -> float64 [rows, D]; rows of other lengths become NaN rows (quarantined later)."""
    lengths = col.value_lengths().to_numpy(zero_copy_only=False) if not pa.types.is_fixed_size_list(col.type) else None
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    if lengths is None:
        return values.reshape(len(col), col.type.list_size)
    d = int(np.bincount(lengths).argmax()) if len(lengths) else 0
    if (lengths == d).all():
        return values.reshape(len(col), d)
    out = np.full((len(col), d), np.nan)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for r in np.nonzero(lengths == d)[0]:
        out[r] = values[starts[r]:starts[r] + d]
    return out


def _rows_of(table: dict, e: int, n: int) -> tuple[int, int]:
    rows = np.nonzero(table["episode_index"] == e)[0]
    if len(rows) == 0:
        raise Quarantine(f"the frame table has no row of episode_index {e}")
    if len(rows) != n or rows[-1] - rows[0] + 1 != len(rows):
        raise Quarantine(f"episode_index {e}: its {len(rows)} rows are not contiguous or not the {n} of 'length'")
    return int(rows[0]), int(rows[-1]) + 1


def _check_table(table: dict, a: int, b: int, e: int, fps: float, tol: float, tasks: dict) -> list[int]:
    """The episode's task ids after the per-frame checks (Quarantine naming the first failure)."""
    fi = table["frame_index"][a:b]
    if not np.array_equal(fi, np.arange(b - a)):
        k = int(np.argmax(fi != np.arange(b - a)))
        raise Quarantine(f"episode_index {e}: frame_index is not 0..{b - a - 1} in order (row {k} holds {fi[k]})")
    ts = table["timestamp"][a:b].astype(np.float64)
    gaps = np.abs(np.diff(ts) - 1 / fps)
    if (gaps > tol).any():
        k = int(np.argmax(gaps > tol))
        raise Quarantine(f"episode_index {e}: timestamps {ts[k]:.4f} -> {ts[k + 1]:.4f} s are not 1/fps apart (tolerance_s {tol:g})")
    ids = [int(t) for t in np.unique(table["task_index"][a:b])]
    unknown = [t for t in ids if t not in tasks]
    if unknown:
        raise Quarantine(f"episode_index {e}: task_index {unknown[0]} names no task in the task table")
    for key in (STATE, ACTION):
        if key in table and not np.isfinite(table[key][a:b]).all():
            bad = int(np.argmax(~np.isfinite(table[key][a:b]).all(1)))
            raise Quarantine(f"episode_index {e}: {key!r} is not finite (NaN/inf) at frame {bad}")
    return [int(table["task_index"][a])] + [t for t in ids if t != int(table["task_index"][a])]


def _probe_video(path: Path) -> tuple[str | None, float]:
    """(why the video cannot be decoded here or None, its end in seconds), from the header alone:
    the frame count over the stream's frame rate."""
    if not path.is_file():
        return f"video {path.name} is missing", 0.0
    try:
        with StrictVideoReader(path) as reader:
            info = reader.info
    except Quarantine as q:
        return q.reason, 0.0
    try:
        av.codec.Codec(info.codec, "r")
    except (av.FFmpegError, ValueError):
        return f"video {path.name}: no decoder for codec {info.codec!r} in this PyAV build", 0.0
    return None, info.n_frames / (info.fps or math.inf)


def _decode_images(path: Path, key: str, rows: list[int]) -> np.ndarray:
    """Image features stored in the parquet as encoded bytes ({"bytes", "path"}) -> uint8 [K, H, W, 3]."""
    try:
        col = pq.read_table(path, columns=[key]).column(key)
    except (OSError, pa.ArrowException, KeyError) as e:
        raise Quarantine(f"{key}: cannot read the image column of {path.name} ({type(e).__name__})") from None
    out = []
    for r in rows:
        cell = col[r].as_py()
        data = cell.get("bytes") if isinstance(cell, dict) else None
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
        if img is None:
            raise Quarantine(f"{key}: row {r} of {path.name} holds no decodable image bytes")
        out.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    if len({im.shape for im in out}) > 1:
        raise Quarantine(f"{key}: images of different sizes in one episode")
    return np.stack(out)
