"""VAMOS navigation samples: one row of a parquet shard per sample (the Hugging Face layout).

Shards ``data/{split}-*.parquet`` under ``root`` (``shards``; the project split ``val`` reads the
``validation`` shards, ``split_names``). Columns: ``image`` (encoded bytes, or the struct
``{bytes, path}`` that ``datasets``' ``Image`` feature writes), ``trajectory_3d`` (metres),
``trajectory_2d`` (pixels, its projection; negative = not projectable), ``camera_params`` (JSON),
``lang_goal`` (``"... <point x=.. y=..>goal</point>"``) and/or ``text``, optional ``horizon``
(points kept) and an ``id`` column (``id_column``). Shards are read in row batches of
``batch_rows`` with pyarrow, never whole; image bytes are hashed while listing (the fingerprint of
a row is its content, not its shard's) and decoded only by ``read_frames``.

Episode ids: the ``id`` column when the shard has one, else ``<shard stem>:<row>`` (row in the
shard, 6 digits), stable while the shards are.

**Axis convention.** VAMOS does not document the axes of ``trajectory_3d``. For every shard each
trajectory is projected through its ``camera_params`` under each known convention (``flu``: robot
frame x forward, y left, z up, camera level at ``camera_height_m`` above the robot origin unless a
4x4 ``T_cam_robot`` is given; ``opencv``: camera frame x right, y down, z forward) and compared
with ``trajectory_2d``: the fraction of labelled points within ``axis_tolerance_px`` is the
shard's agreement, reported per shard and convention in the run summary (``report["shards"]``).
A shard where the configured convention agrees for fewer than ``min_axis_agreement`` of its points
is refused (its rows quarantined, naming both agreements): a wrong guess would silently flip v_y.
Records carry the trajectory converted to the robot frame (x forward, y left, z up).

camera_params keys read: intrinsics ``K`` / ``camera_matrix`` (3x3 or 9 numbers), ``intrinsics``
({fx, fy, cx, cy} or 4 numbers) or top-level fx/fy/cx/cy; ``T_cam_robot`` (camera from robot,
4x4); ``camera_height_m``. Other keys (``resolution``...) are ignored.

Bad input quarantines the row with a reason: image bytes that do not decode (at decode time), a
trajectory with NaN or fewer than 2 points, a ``lang_goal`` without a point, ``camera_params``
that is not JSON, a missing column or a cell of the wrong type. A file that is not parquet is
listed in ``report["not_parquet"]`` and skipped.
"""
from __future__ import annotations

import glob
import hashlib
import json
import math
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from navcache.pipeline.decode import image_header_size, read_image
from navcache.pipeline.errors import DatasetError, Quarantine
from navcache.pipeline.safepaths import UnsafePath, resolve_under
from navcache.pipeline.sources.base import Episode, Frames, claim_id, json_safe
from navcache.pipeline.sources.fields import declared_record
from navcache.pipeline.sources.options import VamosOptions, build_options

__all__ = ["VamosSource", "parse_goal", "parse_camera", "project", "CONVENTIONS"]

#: conventions the shards are checked against (``auto`` picks among them)
CONVENTIONS = ("flu", "opencv")
_NUM = r'"?([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"?'
_POINT = re.compile(r"<point\s+x\s*=\s*" + _NUM + r"\s+y\s*=\s*" + _NUM, re.IGNORECASE)
_ROW_GROUPS_KEPT = 4  # decoded image row groups kept per source (episodes arrive in shard order)


def parse_goal(text: object) -> tuple[float, float] | None:
    """The (x, y) of the first ``<point x=.. y=..>`` in ``text`` (quoted or not), else None."""
    if not isinstance(text, str):
        return None
    m = _POINT.search(text)
    return (float(m.group(1)), float(m.group(2))) if m else None


def _matrix(value: Any, n: int) -> np.ndarray | None:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return a.reshape(n, n) if a.size == n * n and np.isfinite(a).all() else None


def parse_camera(raw: object) -> tuple[np.ndarray, np.ndarray | None, float]:
    """camera_params (a JSON string or a mapping) -> (K [3,3], T_cam_robot [4,4] or None, camera height m).

    Raises ValueError naming what is missing or malformed."""
    if isinstance(raw, (str, bytes)):
        try:
            cam = json.loads(raw)
        except ValueError as e:
            raise ValueError(f"camera_params is not JSON ({e})") from None
    else:
        cam = raw
    if not isinstance(cam, dict):
        raise ValueError(f"camera_params must be a JSON object, got {type(cam).__name__}")
    k = next((_matrix(cam[key], 3) for key in ("K", "camera_matrix") if key in cam), None)
    intr = cam.get("intrinsics", cam)
    if k is None and isinstance(intr, (list, tuple)) and len(intr) == 4:
        intr = dict(zip(("fx", "fy", "cx", "cy"), intr))
    if k is None and isinstance(intr, dict) and all(key in intr for key in ("fx", "fy", "cx", "cy")):
        k = _matrix([[intr["fx"], 0, intr["cx"]], [0, intr["fy"], intr["cy"]], [0, 0, 1]], 3)
    if k is None or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise ValueError("camera_params has no usable intrinsics (K, camera_matrix, intrinsics or fx/fy/cx/cy)")
    t = _matrix(cam["T_cam_robot"], 4) if "T_cam_robot" in cam else None
    if "T_cam_robot" in cam and t is None:
        raise ValueError("camera_params T_cam_robot must be 4x4 finite numbers")
    h = cam.get("camera_height_m", 0.0)
    if not isinstance(h, (int, float)) or isinstance(h, bool) or not math.isfinite(h):
        raise ValueError(f"camera_params camera_height_m must be a number, got {h!r}")
    return k, t, float(h)


def _to_camera(p: np.ndarray, convention: str, t: np.ndarray | None, h: float) -> np.ndarray:
    """Points [N, 3] in ``convention`` -> OpenCV camera frame [N, 3]."""
    if convention == "opencv":
        return p
    if t is not None:
        return p @ t[:3, :3].T + t[:3, 3]
    return np.stack([-p[:, 1], h - p[:, 2], p[:, 0]], 1)  # level camera h metres above the robot origin


def project(p: np.ndarray, convention: str, k: np.ndarray, t: np.ndarray | None = None, h: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Pixels [N, 2] of points p [N, 3] under ``convention`` and whether each lies in front ([N] bool)."""
    c = _to_camera(np.asarray(p, np.float64), convention, t, h)
    front = c[:, 2] > 1e-6
    z = np.where(front, c[:, 2], 1.0)
    uv = np.stack([k[0, 0] * c[:, 0] / z + k[0, 1] * c[:, 1] / z + k[0, 2], k[1, 1] * c[:, 1] / z + k[1, 2]], 1)
    return uv, front


def to_robot_frame(p: np.ndarray, convention: str, t: np.ndarray | None) -> np.ndarray:
    """Points [N, 3] in ``convention`` -> robot frame (x forward, y left, z up) [N, 3]."""
    if convention == "flu":
        return p
    if t is not None:  # camera frame -> robot frame through the inverse of T_cam_robot
        return (p - t[:3, 3]) @ t[:3, :3]
    return np.stack([p[:, 2], -p[:, 0], -p[:, 1]], 1)  # a level camera: forward = z, left = -x, up = -y


def _points(value: object, dims: int, name: str) -> np.ndarray:
    """A trajectory cell as float64 [N, dims]; ValueError naming ``name`` otherwise."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(q, (list, tuple)) and len(q) == dims for q in value):
        raise ValueError(f"{name!r} must be a list of [{', '.join('xyz'[:dims]) if dims == 3 else 'u, v'}] points, got {_short(value)}")
    try:
        a = np.asarray(value, dtype=np.float64).reshape(len(value), dims)
    except (TypeError, ValueError):
        raise ValueError(f"{name!r} holds a non-number: {_short(value)}") from None
    return a


def _short(value: object, n: int = 80) -> str:
    s = repr(value)
    return s if len(s) <= n else s[: n - 3] + "..."


class VamosSource:
    """Source of kind ``vamos``; see the module docstring."""

    kind = "vamos"
    Options = VamosOptions
    #: see pipeline/sources/fields.py: the image is read from (shard, row) and checked against its hash
    record_fields = {
        "frames": ("shard", "row", "image_sha256", "image_path"),
        "poses": ("trajectory",),
        "labels": ("goal", "instruction"),
    }

    def __init__(self, root: Path, **options: Any):
        self.root = Path(root)
        self.options = build_options(self.kind, options)
        self.report: dict[str, Any] = {}
        self.num_frames = 1
        self._groups: OrderedDict[tuple[str, int], Any] = OrderedDict()
        self._lock = threading.Lock()
        self._listed = 0

    # ------------------------------------------------------------------------------ listing

    def shard_paths(self, split: str) -> list[Path]:
        """The split's shard files, sorted; DatasetError when none match or one leaves the root."""
        o = self.options
        pattern = o.shards.format(split=o.split_names.get(split, split))
        found = sorted(glob.glob(str(self.root / pattern)))
        if not found:
            raise DatasetError(f"vamos: no shard matches {self.root / pattern} (option 'shards')")
        try:
            return [resolve_under(self.root, str(Path(f).relative_to(self.root)), o.allow_outside_root) for f in found]
        except UnsafePath as e:
            raise DatasetError(f"vamos shard for split {split!r}: {e}") from None

    def episodes(self, split: str) -> list[Episode]:
        """One Episode per row of the split's shards, sorted by id; see the module docstring."""
        import pyarrow.parquet as pq

        self._listed = 0  # rows listed so far over the split's shards (placeholder ids stay unique)
        shards: dict[str, dict] = {}
        not_parquet: list[str] = []
        episodes: list[Episode] = []
        seen: dict[str, int] = {}
        for path in self.shard_paths(split):
            rel = str(path.relative_to(self.root.resolve())) if path.is_relative_to(self.root.resolve()) else str(path)
            try:
                pf = pq.ParquetFile(path)
            except Exception as e:  # noqa: BLE001 - any file that pyarrow cannot open as parquet
                not_parquet.append(f"{rel}: {type(e).__name__}: {str(e)[:120]}")
                continue
            rows, info = self._shard(pf, rel, path.stem, seen)
            shards[rel] = info
            episodes += rows
        self.report = {"split": split, "rows": len(episodes), "quarantined": sum(e.quarantine is not None for e in episodes),
                       "shards": shards, "not_parquet": not_parquet}
        episodes.sort(key=lambda ep: ep.episode_id)
        return episodes

    def _shard(self, pf, rel: str, stem: str, seen: dict[str, int]) -> tuple[list[Episode], dict]:
        """Episodes of one shard and its report entry (rows, agreement per convention, convention used)."""
        o = self.options
        names = pf.schema_arrow.names
        wanted = [c for c in ("image", o.trajectory_3d, o.trajectory_2d, "camera_params", "lang_goal", "text", "horizon", o.id_column) if c in names]
        missing = [c for c in ("image", o.trajectory_3d, o.trajectory_2d, "camera_params") if c not in names]
        if "lang_goal" not in names and "text" not in names:
            missing.append("lang_goal (or text)")
        parsed: list[tuple[str, dict | str]] = []  # (episode id, record or quarantine reason)
        counts = {c: [0, 0] for c in CONVENTIONS}  # agreeing, labelled points
        row = 0
        for batch in pf.iter_batches(batch_size=o.batch_rows, columns=wanted):
            cols = {c: batch.column(c).to_pylist() for c in batch.schema.names}
            for i in range(batch.num_rows):
                cells = {c: v[i] for c, v in cols.items()}
                eid = self._claim(cells.get(o.id_column) if o.id_column in cols else f"{stem}:{row:06d}", row, seen)
                if eid[1]:
                    parsed.append((eid[0], eid[1]))
                elif missing:
                    parsed.append((eid[0], f"shard lacks column(s) {', '.join(missing)} (has {', '.join(names)})"))
                else:
                    parsed.append((eid[0], self._row(cells, rel, row, counts)))
                row += 1
        agreement = {c: (round(a / n, 4) if n else None) for c, (a, n) in counts.items()}
        convention, refusal = self._convention(agreement, rel, row, missing)
        episodes = []
        for r, (eid, rec) in enumerate(parsed):
            reason = rec if isinstance(rec, str) else refusal
            if reason is not None:
                cells = rec if isinstance(rec, dict) else {}
                episodes.append(Episode(eid, {"shard": rel, "row": r, **{k: v for k, v in cells.items() if k == "instruction"}},
                                        (), f"{rel} row {r}: {reason}"))
                continue
            episodes.append(self._finish(eid, rec, convention))
        info = {"rows": row, "axis_agreement": agreement, "convention": convention if refusal is None else None,
                "points_checked": {c: n for c, (_, n) in counts.items()}}
        if refusal is not None:
            info["refused"] = refusal
        return episodes, info

    def _claim(self, value: object, row: int, seen: dict[str, int]) -> tuple[str, str | None]:
        """(episode id, None), or a placeholder unique over the split's rows and why ``value`` is refused."""
        self._listed += 1
        refused = claim_id(value, self.options.id_column, seen, self._listed - 1, item="row")
        return (f"<row #{self._listed - 1}>", refused) if refused else (str(value), None)

    def _convention(self, agreement: dict, rel: str, rows: int, missing: list) -> tuple[str | None, str | None]:
        """The convention this shard's trajectories are read in, or None and why it is refused."""
        o = self.options
        if missing or rows == 0:
            return None, None
        seen = ", ".join(f"{c}: {'n/a' if a is None else f'{a:.0%}'}" for c, a in agreement.items())
        if o.axis_convention == "auto":
            best = max(CONVENTIONS, key=lambda c: -1 if agreement[c] is None else agreement[c])
            if agreement[best] is not None and agreement[best] >= o.min_axis_agreement:
                return best, None
            return None, (f"no axis convention fits: projected trajectory_3d within {o.axis_tolerance_px:g} px of "
                          f"trajectory_2d for {seen} of the points (min_axis_agreement {o.min_axis_agreement:g})")
        a = agreement[o.axis_convention]
        if a is not None and a >= o.min_axis_agreement:
            return o.axis_convention, None
        return None, (f"axis_convention {o.axis_convention!r} does not fit shard {rel}: projected trajectory_3d within "
                      f"{o.axis_tolerance_px:g} px of trajectory_2d for {seen} of the points "
                      f"(min_axis_agreement {o.min_axis_agreement:g}); set options.axis_convention")

    def _row(self, cells: dict, rel: str, row: int, counts: dict) -> dict | str:
        """One row's record (trajectory still in the shard's axes) or the reason it is quarantined;
        adds its projection agreement under each convention to ``counts``."""
        o = self.options
        try:
            p3 = _points(cells[o.trajectory_3d], 3, o.trajectory_3d)
            p2 = _points(cells[o.trajectory_2d], 2, o.trajectory_2d)
        except ValueError as e:
            return str(e)
        horizon = cells.get("horizon")
        if horizon is not None:
            if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 2:
                return f"'horizon' must be an integer >= 2, got {horizon!r}"
            p3, p2 = p3[:horizon], p2[:horizon]
        if len(p3) < 2:
            return f"{o.trajectory_3d!r} has {len(p3)} point(s), fewer than 2"
        if not np.isfinite(p3).all():
            return f"{o.trajectory_3d!r} holds NaN or infinite values"
        if len(p2) != len(p3):
            return f"{o.trajectory_2d!r} has {len(p2)} points, {o.trajectory_3d!r} {len(p3)}"
        try:
            k, t, h = parse_camera(cells["camera_params"])
        except ValueError as e:
            return str(e)
        text = cells.get("lang_goal") if cells.get("lang_goal") is not None else cells.get("text")
        if not isinstance(text, str):
            return f"'lang_goal' must be a string, got {_short(text)}"
        goal = parse_goal(text)
        if goal is None:
            return f"'lang_goal' has no <point x=.. y=..>: {_short(text)}"
        image = self._image(cells["image"])
        if isinstance(image, str):
            return image
        labelled = np.isfinite(p2).all(1) & (p2 >= 0).all(1)
        for c in CONVENTIONS:
            uv, front = project(p3, c, k, t, h)
            close = front & (np.linalg.norm(uv - p2, axis=1) <= o.axis_tolerance_px)
            counts[c][0] += int((close & labelled).sum())
            counts[c][1] += int(labelled.sum())
        return {"shard": rel, "row": row, **image, "points": p3.tolist(), "T_cam_robot": None if t is None else t.tolist(),
                "goal": [goal[0], goal[1]], "instruction": text}

    def _image(self, cell: object) -> dict | str:
        """The image cell as {image_sha256, image_path} (header checked), or why the row is quarantined."""
        raw, path = (cell.get("bytes"), cell.get("path")) if isinstance(cell, dict) else (cell, None)
        if raw is None and path is None:
            return "'image' holds neither bytes nor a path"
        if raw is not None:
            if not isinstance(raw, (bytes, bytearray)):
                return f"'image' must be encoded image bytes, got {type(raw).__name__}"
            size = image_header_size(bytes(raw))
            limit = self.options.max_image_pixels
            if size is not None and limit is not None and size[0] * size[1] > limit:
                return f"image is {size[0]}x{size[1]}, above max_image_pixels={limit}"
            return {"image_sha256": hashlib.sha256(raw).hexdigest(), "image_path": None}
        if not isinstance(path, str):
            return f"'image' path must be a string, got {_short(path)}"
        try:
            resolve_under(self.root, path, self.options.allow_outside_root)
        except UnsafePath as e:
            return f"unsafe image path: {e}"
        return {"image_sha256": None, "image_path": path}

    def _finish(self, eid: str, rec: dict, convention: str) -> Episode:
        t = None if rec["T_cam_robot"] is None else np.asarray(rec["T_cam_robot"])
        robot = to_robot_frame(np.asarray(rec["points"]), convention, t)
        record = {k: rec[k] for k in ("shard", "row", "image_sha256", "image_path", "goal", "instruction")}
        record["trajectory"] = [[round(float(v), 9) for v in q] for q in robot]
        record["convention"] = convention
        files = (resolve_under(self.root, rec["image_path"], self.options.allow_outside_root),) if rec["image_path"] else ()
        return Episode(eid, json_safe(record), files, None)

    # ------------------------------------------------------------------------------ decoding

    def read_frames(self, episode: Episode, indices: Sequence[int] | None = None, *, resize_to: tuple[int, int] | None = None,
                    fit: bool = False) -> Frames:
        """The sample's one image: pixels uint8 [1, H, W, 3], index 0. Quarantine when it does not
        decode, is above ``max_image_pixels``, or its bytes changed since listing. ``fit`` reduces
        an image file (``Source.read_frames``); images embedded in the shard come at stored size."""
        if episode.quarantine is not None:
            raise Quarantine(episode.quarantine)
        if indices is not None and list(indices) != [0]:
            raise Quarantine(f"{episode.episode_id}: a VAMOS sample has one image (index 0), asked for {list(indices)}")
        r = declared_record(self, episode, ("frames",))
        if r["image_path"] is not None:
            rgb = read_image(episode.files[0], resize_to, self.options.max_image_pixels, fit=fit)
        else:
            raw = self._image_bytes(r["shard"], int(r["row"]))
            if hashlib.sha256(raw).hexdigest() != r["image_sha256"]:
                raise Quarantine(f"{r['shard']} row {r['row']}: image bytes changed since the shard was listed; rerun")
            rgb = _decode(raw, f"{r['shard']} row {r['row']}")
        return Frames(pixels=rgb[None], indices=np.zeros(1, np.int64), padded=np.zeros(1, bool))

    def _image_bytes(self, shard: str, row: int) -> bytes:
        """Row ``row``'s image bytes, reading (and keeping a few of) the shard's row groups."""
        import pyarrow.parquet as pq

        path = resolve_under(self.root, shard, self.options.allow_outside_root)
        with self._lock:
            meta = pq.ParquetFile(path).metadata
            start = 0
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                if row < start + n:
                    break
                start += n
            else:
                raise Quarantine(f"{shard} has no row {row} any more; rerun")
            key = (shard, g)
            if key not in self._groups:
                self._groups[key] = pq.ParquetFile(path).read_row_group(g, columns=["image"]).column(0).combine_chunks()
                if len(self._groups) > _ROW_GROUPS_KEPT:
                    self._groups.popitem(last=False)
            self._groups.move_to_end(key)
            col = self._groups[key]
        cell = col[row - start]
        value = cell.as_py()
        raw = value.get("bytes") if isinstance(value, dict) else value
        if not isinstance(raw, (bytes, bytearray)):
            raise Quarantine(f"{shard} row {row}: image bytes missing; rerun")
        return bytes(raw)


def _decode(raw: bytes, where: str) -> np.ndarray:
    """Encoded image bytes -> uint8 [H, W, 3] RGB; Quarantine naming ``where`` if they do not decode
    (OpenCV decodes a JPEG cut short into a partly grey image: its end-of-image marker is checked first)."""
    if raw[:2] == b"\xff\xd8" and not raw.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise Quarantine(f"{where}: truncated JPEG (no end-of-image marker in its {len(raw)} bytes)")
    try:
        bgr = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:
        raise Quarantine(f"{where}: image does not decode ({str(e).splitlines()[-1][:100]})") from None
    if bgr is None or bgr.ndim != 3 or 0 in bgr.shape:
        raise Quarantine(f"{where}: image bytes do not decode (not an image or corrupt)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
