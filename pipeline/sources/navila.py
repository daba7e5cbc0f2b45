"""NaVILA / VLN-CE samples: an instruction, the observation frames so far, and the answer.

Layout under ``root`` (names are templates filled with the split):
  annotations_{split}.json  JSON list of {"video_id", "frames": [image paths], "q", "a"}
  {split}/...               the images; "frames" paths are relative to this folder
  poses_{split}.json        optional {video_id: [[x, y, yaw], ... one per frame]}

Every file read resolves under ``root`` (symlinks followed) unless the ``allow_outside_root``
option says otherwise. One record that cannot be stored -- a lone surrogate in a string, an
integer literal longer than ``MAX_INT_DIGITS`` -- is quarantined; only a file that cannot be parsed
at all fails its split.

An episode is one record. Only the ``num_frames`` frames NaVILA's sampling keeps are listed in
``Episode.files`` and decoded, so memory stays at [num_frames, H, W, 3] however long the history.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from itertools import chain
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from navcache.pipeline import safepaths, sampling
from navcache.pipeline.decode import DecodedFrames, black_frames, read_jpegs
from navcache.pipeline.errors import DatasetError, Quarantine
from navcache.pipeline.fingerprint_memo import code_digest
from navcache.pipeline.safepaths import Resolver, UnsafePath, folder_under, resolve_under
from navcache.pipeline.sampling import navila_indices
from navcache.pipeline.sources import base
from navcache.pipeline.sources.base import Episode, Frames, claim_id, json_safe
from navcache.pipeline.sources.fields import declared_record
from navcache.pipeline.sources.options import NavilaOptions, build_options

__all__ = ["MAX_INT_DIGITS", "NavilaSource"]

#: longest integer literal read as a number: CPython's default int/str conversion limit, fixed here
#: so that a file parses the same whatever ``sys.set_int_max_str_digits`` the process runs with
MAX_INT_DIGITS = 4300
#: bytes of decoded frames a source keeps for the samples after (~330 frames of 512x512; speed only)
DECODE_MEMO_BYTES = 256 << 20


class _Object(dict):
    """A parsed JSON object that remembers keys given more than once (the last value is kept)."""

    duplicates: tuple[str, ...] = ()


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        obj.duplicates = tuple(sorted({k for k, _ in pairs if k in seen or seen.add(k)}))
    return obj


class _HugeInt:
    """Stands in for an integer literal longer than ``MAX_INT_DIGITS``: ``int()`` would raise
    ValueError inside ``json.loads`` and so fail the whole file for one value; the marker lets the
    record holding it be quarantined instead."""

    __slots__ = ("digits",)

    def __init__(self, digits: int):
        self.digits = digits

    def __repr__(self) -> str:
        return f"<integer literal of {self.digits} digits>"


def _parse_int(text: str) -> int | _HugeInt:
    digits = len(text) - text.startswith("-")
    return _HugeInt(digits) if digits > MAX_INT_DIGITS else int(text)


def _storable_fast(value: object) -> bool:
    """True when ``value`` holds no ``_HugeInt`` and no lone surrogate, checked at C speed (the
    JSON encoder refuses the marker, UTF-8 the surrogate); False means "ask ``_unstorable``"."""
    try:
        json.dumps(value, ensure_ascii=False, check_circular=False).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError):
        return False
    return True


def _unstorable(value: object, where: str = "") -> str | None:
    """Why ``value`` (parsed JSON) cannot go into the cache index, naming where in it
    (``'frames'[3]``), or None.

    Refused: an integer literal past ``MAX_INT_DIGITS`` and a string or key with a lone surrogate
    (a JSON ``\\ud800`` escape decodes to one; it is no text UTF-8 can encode). Recursion is bounded
    by the parser's, which already refused much deeper nesting (the caller catches the rest).
    """
    if isinstance(value, _HugeInt):
        return f"{where or 'value'}: {value!r}, longer than {MAX_INT_DIGITS} digits"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            text = repr(value)  # repr escapes the surrogate: the reason itself stays valid text
            return f"{where or 'value'}: {text if len(text) <= 80 else text[:77] + '...'} holds a lone surrogate, which is not text"
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        at = f"{where}[{k!r}]" if where else repr(k)
        problem = (_unstorable(k, f"key {at}") if isinstance(k, str) else None) or _unstorable(v, at)
        if problem:
            return problem
    return None


def _storable(value: Any) -> Any:
    """``value`` with every ``_HugeInt`` as its description (``json_safe`` does the rest)."""
    if isinstance(value, _HugeInt):
        return repr(value)
    if isinstance(value, dict):
        return {k: _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read: {e.strerror or e}") from None


def _load_json(path: Path, raw: bytes | None = None) -> Any:
    """Parsed JSON (objects as ``_Object``, over-long integers as ``_HugeInt``) of ``path`` (or of
    ``raw``, its bytes already read), or DatasetError naming the file and the line/column of a
    syntax error, or what else made it unreadable (nesting too deep, a file that is one over-long
    integer)."""
    raw = _read(path) if raw is None else raw
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start}): {e.reason}") from None
    try:
        data = json.loads(text, object_pairs_hook=_object, parse_int=_parse_int)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise DatasetError(f"{path}: JSON nested too deeply") from None
    except ValueError as e:  # nothing known raises it since _parse_int; kept as the split's error
        raise DatasetError(f"{path}: unreadable JSON: {e}") from None
    if isinstance(data, _HugeInt):
        raise DatasetError(f"{path}: unreadable JSON: the whole file is an {data!r}")
    return data


def _finite(v: int | float) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer literal too large for a float
        return False


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_poses(poses: object, n_frames: int) -> tuple[list[list[float]] | None, str | None]:
    """``(poses as [[x, y, yaw]] floats, None)`` or ``(None, reason)``."""
    fast = _poses_fast(poses, n_frames)
    if fast is not None:
        return fast, None
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


def _poses_fast(poses: object, n_frames: int) -> list[list[float]] | None:
    """The common case of ``_check_poses`` (well-formed, finite) at C speed: type and length sets
    instead of a Python test per pose; None: take the slow path, which names what is wrong.
    A finite sum of floats means every term was finite."""
    if type(poses) is not list or len(poses) != n_frames or set(map(type, poses)) != {list} or set(map(len, poses)) != {3}:
        return None
    flat = list(chain.from_iterable(poses))
    kinds = set(map(type, flat))
    if not kinds <= _REAL_SET:  # exact types: bool (a subclass of int) is refused, as by ``_is_real``
        return None
    try:
        # all floats (JSON's usual): the parsed lists themselves (only this record reads them:
        # a video_id named twice is refused), else each value as a float
        out = poses if kinds == {float} else [[float(p[0]), float(p[1]), float(p[2])] for p in poses]
        # a sum overflowing to inf only sends large finite poses to the slow path
        finite = math.isfinite(sum(flat))
    except OverflowError:
        return None
    return out if finite else None


_REAL_SET = frozenset({int, float})

#: the code that turns the parsed files into episodes (this module, the sampling rule, the path
#: checks, the episode type, the listing memo), by content: an edit to it cannot be answered from a
#: listing or fingerprint memo of the old code's episodes
_CODE = code_digest(__file__, sampling.__file__, safepaths.__file__, base.__file__, Path(__file__).parents[1] / "listing_memo.py")


@functools.lru_cache(maxsize=4096)  # a pure function of history length: one numpy linspace per length, not per record
def _sampled(n: int, t: int) -> tuple[tuple[int, ...], int]:
    """``navila_indices(n, t)`` as a tuple of ints and the padding count."""
    idx, n_pad = navila_indices(n, t)
    return tuple(idx.tolist()), n_pad


class NavilaSource:
    """Source of kind ``navila``; see the module docstring for the layout."""

    kind = "navila"
    #: ``episodes`` takes a ``memo`` (``pipeline/listing_memo.py``)
    memoised_listing = True
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
        #: frames decoded this run (histories share frames: each is decoded once while it stays in)
        self.decoded = DecodedFrames(DECODE_MEMO_BYTES)
        #: set by ``episodes``: changes whenever a record of that listing could (see
        #: ``pipeline/fingerprint_memo.py``): the bytes parsed, the options, the listing code
        #: (``_token``)
        self.listing_token: str | None = None

    def _image_dir(self, split: str) -> Path:
        """The split's image folder; DatasetError if it leaves the dataset root (e.g. a symlink)."""
        try:
            return folder_under(self.root, self.images.format(split=split), self.options.allow_outside_root)
        except UnsafePath as e:
            raise DatasetError(f"navila option 'images' for split {split!r}: {e}") from None

    def _file(self, option: str, split: str) -> Path:
        """The resolved path of the file option ``option`` names for ``split`` (annotations, poses);
        DatasetError if it leaves the dataset root (``..``, an absolute path, a symlink)."""
        try:
            return resolve_under(self.root, getattr(self, option).format(split=split), self.options.allow_outside_root)
        except UnsafePath as e:
            raise DatasetError(f"navila option {option!r} for split {split!r}: {e}") from None

    # ------------------------------------------------------------------------------ listing

    def episodes(self, split: str, memo=None) -> list[Episode]:
        """One Episode per annotation record, sorted by episode_id; bad records are quarantined.

        Raises DatasetError when the annotation file (or an existing pose file) is missing,
        not valid JSON, or of the wrong top-level type. ``memo`` (``pipeline.listing_memo.ListingMemo``):
        the listing is answered from it when the files parsed and the folders the path checks read
        are unchanged, and remembered in it otherwise.
        """
        self.listing_token = None
        started = time.time_ns()  # folder versions are judged against it (``ListingMemo``)
        ann_path = self._file("annotations", split)
        if not ann_path.is_file():
            raise DatasetError(f"navila annotation file not found: {ann_path}")
        ann_raw = _read(ann_path)
        if memo is not None:
            hit = self._remembered(split, ann_path, ann_raw, memo)
            if hit is not None:
                episodes, self.report, self.listing_token = hit
                return episodes
        records = _load_json(ann_path, ann_raw)
        if not isinstance(records, list):
            raise DatasetError(f"{ann_path}: expected a JSON list of records, got {type(records).__name__}")

        pose_path = self._file("poses", split)
        pose_map: dict[str, Any] | None = None
        pose_raw = None
        ambiguous: set[str] = set()  # video_ids listed more than once in the pose file
        if pose_path.exists():
            pose_raw = _read(pose_path)
            pose_map = _load_json(pose_path, pose_raw)
            if not isinstance(pose_map, dict):
                raise DatasetError(f"{pose_path}: expected a JSON object {{video_id: poses}}, got {type(pose_map).__name__}")
            ambiguous = set(pose_map.duplicates)

        image_dir = self._image_dir(split)
        seen: dict[str, int] = {}  # video_id -> index of the record that claimed it first
        resolve = Resolver(image_dir, self.options.allow_outside_root)  # histories repeat frames: each resolved once
        episodes = [
            self._episode(i, rec, split, resolve, ann_path.name, pose_map, pose_path.name, seen, ambiguous)
            for i, rec in enumerate(records)
        ]

        without_poses = sorted(v for v in seen if pose_map is not None and v not in pose_map)
        orphan_poses = sorted(json_safe(k) for k in (pose_map or {}) if k not in seen)
        self.report = {
            "split": split,
            "records": len(records),
            "quarantined": sum(ep.quarantine is not None for ep in episodes),
            "pose_file": str(pose_path) if pose_map is not None else None,
            "annotations_without_poses": without_poses,
            "poses_without_annotation": orphan_poses,
        }
        episodes.sort(key=lambda ep: ep.episode_id)
        self.listing_token = self._token(split, ann_path, ann_raw, pose_path, pose_raw)
        if memo is not None and resolve.pure:
            memo.save(self.listing_token, str(resolve.real_root), started, resolve.listed(), episodes, self.report)
        return episodes

    def _token(self, split: str, ann_path: Path, ann_raw: bytes, pose_path: Path, pose_raw: bytes | None) -> str:
        """What the records of a listing are a function of (see ``listing_token``): the bytes of
        both files (each after its length; no pose file differs from an empty one), their own
        names (pose errors name the pose file, as resolved through symlinks), split, options, code."""
        h = hashlib.sha256(json.dumps([self.kind, split, dataclasses.asdict(self.options), _CODE, ann_path.name, pose_path.name,
                                       pose_raw is not None]).encode())
        for raw in (ann_raw, pose_raw or b""):
            h.update(len(raw).to_bytes(8, "little") + raw)
        return h.hexdigest()

    def _remembered(self, split: str, ann_path: Path, ann_raw: bytes, memo) -> tuple[list[Episode], dict, str] | None:
        """(episodes, report, token) from ``memo`` when it holds this listing; None on a miss, and
        whenever the pose file or image folder would fail the listing (it then raises as usual)."""
        try:
            pose_path = self._file("poses", split)
            pose_raw = _read(pose_path) if pose_path.exists() else None
            image_dir = os.path.realpath(self._image_dir(split))
        except DatasetError:
            return None
        token = self._token(split, ann_path, ann_raw, pose_path, pose_raw)
        hit = memo.load(token, image_dir)
        return None if hit is None else (*hit, token)

    def _episode(
        self,
        i: int,
        rec: object,
        split: str,
        resolve: Resolver,
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
            return Episode(episode_id, {"record_index": i, **_storable(rec)}, (), f"{where}: {reason}")

        if getattr(rec, "duplicates", ()):
            return bad(placeholder, f"keys given more than once: {list(rec.duplicates)}")
        vid = rec.get("video_id")
        try:
            unstorable = None if _storable_fast(rec) else _unstorable(rec)
        except RecursionError:  # parsed a few frames shallower than this walk starts
            return bad(placeholder, "record nested too deeply")
        if unstorable:
            usable_id = _unstorable(vid) is None and claim_id(vid, "video_id", seen, i) is None
            return bad(vid if usable_id else placeholder, unstorable)
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
            resolve.check_all(frames)  # every path of the history is checked, not only the sampled ones
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

        idx, n_pad = _sampled(len(frames), self.num_frames)
        record = {
            "split": split,  # read_frames needs it to find the image folder again
            "q": rec["q"],
            "a": rec["a"],
            "frames": list(frames),
            "n_frames": len(frames),
            "sample_indices": list(idx),  # [num_frames], -1 for front padding
            "n_pad": n_pad,
            "poses": poses,
            "pose_error": pose_error,
        }
        files = resolve.resolved([frames[k] for k in idx if k >= 0])  # str paths: no Path per file
        return Episode(vid, record, files, None)

    # ------------------------------------------------------------------------------ decoding

    def read_frames(self, episode: Episode, indices: Sequence[int] | None = None, *, resize_to: tuple[int, int] | None = None,
                    fit: bool = False) -> Frames:
        """The sampled frames, front-padded with black frames: pixels uint8 [T, H, W, 3] RGB.

        ``resize_to`` (width, height): JPEGs at least twice that size come DCT-reduced
        (``decode.read_image``), with ``fit`` JPEGs of any size; an image above the
        ``max_image_pixels`` option is quarantined.

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
                paths = [resolve_under(image_dir, frames[k], self.options.allow_outside_root) for k in idx if k >= 0]
            except UnsafePath as e:
                raise Quarantine(f"{episode.episode_id}: {e}") from None
        if not paths:
            raise ValueError(f"{episode.episode_id}: no real frame among indices {idx}; cannot size the padding")

        real = read_jpegs(paths, resize_to, self.options.max_image_pixels, fit=fit, memo=self.decoded)  # [R, H, W, 3]
        pixels = black_frames(len(idx), real.shape[1], real.shape[2])
        is_real = np.asarray(idx) >= 0
        pixels[is_real] = real
        return Frames(pixels=pixels, indices=np.asarray(idx, dtype=np.int64), padded=~is_real)


def _brief(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"
