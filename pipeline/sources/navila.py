"""NaVILA / VLN-CE samples: an instruction, the observation frames so far, and the answer.

Layout under ``root`` (names are templates filled with the split):
  annotations_{split}.json  JSON list of {"video_id", "frames": [image paths], "q", "a"}
  {split}/...               the images; "frames" paths are relative to this folder
  poses_{split}.json        optional {video_id: [[x, y, yaw], ... one per frame]}

An episode is one record. Only the ``num_frames`` frames NaVILA's sampling keeps are listed in
``Episode.files`` and decoded, so memory stays at [num_frames, H, W, 3] however long the history.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from navcache.pipeline.decode import black_frames, read_jpegs
from navcache.pipeline.errors import DatasetError, Quarantine
from navcache.pipeline.safepaths import UnsafePath, folder_under, resolve_under
from navcache.pipeline.sampling import navila_indices
from navcache.pipeline.sources.base import Episode, Frames, claim_id
from navcache.pipeline.sources.fields import declared_record
from navcache.pipeline.sources.options import NavilaOptions, build_options

__all__ = ["NavilaSource"]


class _Object(dict):
    """A parsed JSON object that remembers keys given more than once (the last value is kept)."""

    duplicates: tuple[str, ...] = ()


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        obj.duplicates = tuple(sorted({k for k, _ in pairs if k in seen or seen.add(k)}))
    return obj


def _load_json(path: Path) -> Any:
    """Parsed JSON (objects as ``_Object``), or DatasetError naming the file and the line/column of
    a syntax error, or what else made it unreadable (nesting too deep, an integer too long)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start}): {e.reason}") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        return json.loads(text, object_pairs_hook=_object)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise DatasetError(f"{path}: JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer literal past Python's digit limit
        raise DatasetError(f"{path}: unreadable JSON: {e}") from None


def _finite(v: int | float) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer literal too large for a float
        return False


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_poses(poses: object, n_frames: int) -> tuple[list[list[float]] | None, str | None]:
    """``(poses as [[x, y, yaw]] floats, None)`` or ``(None, reason)``."""
    if not isinstance(poses, list):
        return None, f"poses must be a list of [x, y, yaw], got {type(poses).__name__}"
    out = []
    for j, p in enumerate(poses):
        if not isinstance(p, list) or len(p) != 3 or not all(_is_real(v) for v in p):
            return None, f"pose #{j} must be [x, y, yaw] numbers, got {p!r}"
        if not all(_finite(v) for v in p):
            return None, f"pose #{j} is not finite: {p!r}"
        out.append([float(v) for v in p])
    if len(out) != n_frames:
        return None, f"{len(out)} poses for {n_frames} frames"
    return out, None


class NavilaSource:
    """Source of kind ``navila``; see the module docstring for the layout."""

    kind = "navila"
    Options = NavilaOptions
    #: see ``pipeline/sources/fields.py``. n_frames and n_pad follow from frames and
    #: sample_indices (so they never cause a recompute of their own) and keep the fingerprints of
    #: caches built before the declarations; split finds the image folder for explicit indices.
    record_fields = {
        "frames": ("frames", "sample_indices", "n_pad", "n_frames", "split"),
        "poses": ("poses", "pose_error", "n_frames", "sample_indices"),
    }

    def __init__(self, root: Path, **options: Any):
        """``options``: the fields of ``NavilaOptions`` (ConfigError naming a bad one)."""
        self.root = Path(root)
        self.options = o = build_options(self.kind, options)
        self.annotations, self.images, self.poses, self.num_frames = o.annotations, o.images, o.poses, o.num_frames
        # Filled by episodes(): cross-file consistency that is not any one episode's fault.
        self.report: dict[str, Any] = {}

    def _image_dir(self, split: str) -> Path:
        """The split's image folder; DatasetError if it leaves the dataset root (e.g. a symlink)."""
        try:
            return folder_under(self.root, self.images.format(split=split))
        except UnsafePath as e:
            raise DatasetError(f"navila option 'images' for split {split!r}: {e}") from None

    # ------------------------------------------------------------------------------ listing

    def episodes(self, split: str) -> list[Episode]:
        """One Episode per annotation record, sorted by episode_id; bad records are quarantined.

        Raises DatasetError when the annotation file (or an existing pose file) is missing,
        not valid JSON, or of the wrong top-level type.
        """
        ann_path = self.root / self.annotations.format(split=split)
        if not ann_path.is_file():
            raise DatasetError(f"navila annotation file not found: {ann_path}")
        records = _load_json(ann_path)
        if not isinstance(records, list):
            raise DatasetError(f"{ann_path}: expected a JSON list of records, got {type(records).__name__}")

        pose_path = self.root / self.poses.format(split=split)
        pose_map: dict[str, Any] | None = None
        ambiguous: set[str] = set()  # video_ids listed more than once in the pose file
        if pose_path.exists():
            pose_map = _load_json(pose_path)
            if not isinstance(pose_map, dict):
                raise DatasetError(f"{pose_path}: expected a JSON object {{video_id: poses}}, got {type(pose_map).__name__}")
            ambiguous = set(pose_map.duplicates)

        image_dir = self._image_dir(split)
        seen: dict[str, int] = {}  # video_id -> index of the record that claimed it first
        episodes = [
            self._episode(i, rec, split, image_dir, ann_path.name, pose_map, pose_path.name, seen, ambiguous)
            for i, rec in enumerate(records)
        ]

        without_poses = sorted(v for v in seen if pose_map is not None and v not in pose_map)
        orphan_poses = sorted(k for k in (pose_map or {}) if k not in seen)
        self.report = {
            "split": split,
            "records": len(records),
            "quarantined": sum(ep.quarantine is not None for ep in episodes),
            "pose_file": str(pose_path) if pose_map is not None else None,
            "annotations_without_poses": without_poses,
            "poses_without_annotation": orphan_poses,
        }
        episodes.sort(key=lambda ep: ep.episode_id)
        return episodes

    def _episode(
        self,
        i: int,
        rec: object,
        split: str,
        image_dir: Path,
        ann_name: str,
        pose_map: dict[str, Any] | None,
        pose_name: str,
        seen: dict[str, int],
        ambiguous: set[str],
    ) -> Episode:
        where = f"{ann_name} record #{i}"
        placeholder = f"<record #{i}>"
        if not isinstance(rec, dict):
            return Episode(placeholder, {"record_index": i, "raw": rec}, (), f"{where}: expected an object, got {type(rec).__name__}")

        def bad(episode_id: str, reason: str) -> Episode:
            return Episode(episode_id, {"record_index": i, **rec}, (), f"{where}: {reason}")

        if getattr(rec, "duplicates", ()):
            return bad(placeholder, f"keys given more than once: {list(rec.duplicates)}")
        vid = rec.get("video_id")
        refused = claim_id(vid, "video_id", seen, i)
        if refused:
            return bad(placeholder, refused)

        frames = rec.get("frames")
        if not isinstance(frames, list) or not frames:
            return bad(vid, f"'frames' must be a non-empty list of paths, got {_brief(frames)}")
        for j, f in enumerate(frames):
            if not isinstance(f, str):
                return bad(vid, f"'frames'[{j}] must be a string path, got {type(f).__name__} {f!r}")
        for key in ("q", "a"):
            if not isinstance(rec.get(key), str):
                return bad(vid, f"{key!r} must be a string, got {_brief(rec.get(key))}")

        try:
            resolved = [resolve_under(image_dir, f) for f in frames]
        except UnsafePath as e:
            return bad(vid, f"unsafe path in 'frames': {e}")

        # Pose problems do not quarantine the episode here: its frames are fine. They travel in the
        # record as ``pose_error`` and the stages that need poses quarantine it there.
        poses, pose_error = None, None
        if pose_map is not None:
            if vid not in pose_map:
                pose_error = f"no poses for video_id {vid!r} in {pose_name}"
            elif vid in ambiguous:
                pose_error = f"{pose_name} lists video_id {vid!r} more than once"
            else:
                poses, reason = _check_poses(pose_map[vid], len(frames))
                if reason:
                    pose_error = f"{pose_name}[{vid!r}]: {reason}"

        idx, n_pad = navila_indices(len(frames), self.num_frames)
        record = {
            "split": split,  # read_frames needs it to find the image folder again
            "q": rec["q"],
            "a": rec["a"],
            "frames": list(frames),
            "n_frames": len(frames),
            "sample_indices": idx.tolist(),  # [num_frames], -1 for front padding
            "n_pad": n_pad,
            "poses": poses,
            "pose_error": pose_error,
        }
        files = tuple(resolved[k] for k in idx.tolist() if k >= 0)
        return Episode(vid, record, files, None)

    # ------------------------------------------------------------------------------ decoding

    def read_frames(self, episode: Episode, indices: Sequence[int] | None = None, *, resize_to: tuple[int, int] | None = None) -> Frames:
        """The sampled frames, front-padded with black frames: pixels uint8 [T, H, W, 3] RGB.

        ``resize_to`` (width, height): JPEGs at least twice that size come DCT-reduced
        (``decode.read_image``); an image above the ``max_image_pixels`` option is quarantined.

        ``indices`` (default: the record's ``sample_indices``) are frame numbers into the record's
        ``frames``; -1 marks a black padding row. Raises Quarantine for a quarantined episode,
        an index outside the record, or a missing/corrupt/odd-sized image.
        """
        if episode.quarantine is not None:
            raise Quarantine(episode.quarantine)
        rec = declared_record(self, episode, ("frames",))
        if indices is None:
            idx = [int(k) for k in rec["sample_indices"]]
            paths = list(episode.files)  # exactly what was fingerprinted
        else:
            idx = [int(k) for k in indices]
            frames = rec["frames"]
            for k in idx:
                if not -1 <= k < len(frames):
                    raise Quarantine(f"{episode.episode_id}: frame index {k} out of range for {len(frames)} frames")
            image_dir = self._image_dir(rec["split"])
            try:
                paths = [resolve_under(image_dir, frames[k]) for k in idx if k >= 0]
            except UnsafePath as e:
                raise Quarantine(f"{episode.episode_id}: {e}") from None
        if not paths:
            raise ValueError(f"{episode.episode_id}: no real frame among indices {idx}; cannot size the padding")

        real = read_jpegs(paths, resize_to, self.options.max_image_pixels)  # [R, H, W, 3]
        pixels = black_frames(len(idx), real.shape[1], real.shape[2])
        is_real = np.asarray(idx) >= 0
        pixels[is_real] = real
        return Frames(pixels=pixels, indices=np.asarray(idx, dtype=np.int64), padded=~is_real)


def _brief(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"
