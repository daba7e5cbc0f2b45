"""Plain video datasets: one episode per video file or per folder of numbered frames.

Layout under ``root`` (``split_dir`` is a template filled with the split)::

    {split_dir}/**/<name>.mp4|.avi|.mov|.mkv|.webm   a video episode (extension case-insensitive)
    {split_dir}/**/<name>/0001.jpg ...                a frames episode: .jpg/.jpeg/.png images named
                                                      by one pattern with a number, no media subfolders
    {split_dir}/**/<name>.json                        optional metadata object  -> record["meta"]
    {split_dir}/**/<name>.gt.npz                      optional ground truth     -> load_gt_geometry()
    {split_list}                                      optional: the split's episode ids, one a line

The episode id is the media path relative to the split folder without its extension, '/'
separated (``scene1/cam0``). Hidden names (leading '.') are skipped. Every episode is decoded at
N_m = min(num_frames, n) frames ``np.linspace(0, n - 1, N_m).astype(int)`` (Spatial-MLLM's rule).

Listing opens each listed video's container once for its frame count and fps (header only, no
decoding) and reads the small ``.json`` sidecars; frames and ``.gt.npz`` files are only read on
demand.
"""
from __future__ import annotations

import json
import math
import os
import re
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from navcache.pipeline.cores import usable_cores
from navcache.pipeline.decode import VIDEO_MEMO_BYTES, DecodedVideoFrames, check_file, read_jpegs, validate_indices
from navcache.pipeline.video_check import check_mp4
from navcache.pipeline.video_reader import StrictVideoReader
from navcache.pipeline.errors import DatasetError, Quarantine
from navcache.pipeline.safepaths import Resolver, UnsafePath, folder_under, resolve_under
from navcache.pipeline.sampling import uniform_indices
from navcache.pipeline.sources.base import Episode, Frames
from navcache.pipeline.sources.fields import DeclaredRecord, declared_record
from navcache.pipeline.sources.options import VideosOptions, build_options

__all__ = ["VideosSource", "VIDEO_EXTS", "IMAGE_EXTS"]

VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm"})
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png"})
META_SUFFIX, GT_SUFFIX = ".json", ".gt.npz"
# The metadata object enters the record, and records go into the cache index.
META_MAX_BYTES = 1 << 20
# Rotations stored as float32 are orthonormal to ~1e-6; this only catches wrong conventions
# (a 4x4 cut to 3x4 of a scaled pose, a transposed or world-from-camera matrix with translation).
ROTATION_TOL = 1e-2
_NUMBERED = re.compile(r"^(.*?)(\d+)(\D*)$")  # the last run of digits in a file stem
_SKIP_CHUNK = 8 << 20  # bytes decompressed at a time while skipping unsampled depth frames
_SPLIT_FOLDER = "<split folder>"


@dataclass(frozen=True)
class _Found:
    """A media item seen while walking the split folder (nothing opened yet).

    rel: path relative to the split folder with its extension ('/' separated), unique.
    problem: why it cannot be an episode, known from names alone.
    """

    episode_id: str
    kind: str  # "video" | "frames"
    path: Path
    rel: str
    problem: str | None = None
    #: a frames folder's image names as the walk listed them (unsorted), so it is not listed twice
    images: tuple[str, ...] | None = None


class VideosSource:
    """Source of kind ``videos``; see the module docstring for the layout."""

    kind = "videos"
    Options = VideosOptions
    #: see ``pipeline/sources/fields.py``. Videos carry no ground-truth poses: the ``poses`` use
    #: names the fields a poses reader looks for, so it finds them absent instead of undeclared.
    record_fields = {
        "frames": ("media", "kind", "n_frames", "sample_indices"),
        "gt_geometry": ("gt_geometry", "media", "n_frames", "sample_indices"),
        "poses": ("poses", "pose_error", "n_frames", "sample_indices"),
    }

    def __init__(self, root: Path, **options: Any):
        """``options``: the fields of ``VideosOptions`` (ConfigError naming a bad one)."""
        self.root = Path(root)
        self.options = o = build_options(self.kind, options)
        self.split_dir, self.split_list, self.num_frames, self.min_frames = o.split_dir, o.split_list, o.num_frames, o.min_frames
        # Filled by episodes(): what the listing saw, for the run summary.
        self.report: dict[str, Any] = {}
        #: video frames decoded this run (stages reading the same clip, copies of one file): each once
        self.decoded = DecodedVideoFrames(VIDEO_MEMO_BYTES)

    # ------------------------------------------------------------------------------ listing

    def _split_folder(self, split: str) -> Path:
        """The split folder (unresolved path); DatasetError if it is missing or leaves the root."""
        try:
            folder = folder_under(self.root, self.split_dir.format(split=split), self.options.allow_outside_root)
        except UnsafePath as e:
            raise DatasetError(f"videos option 'split_dir' for split {split!r}: {e}") from None
        if not folder.is_dir():
            raise DatasetError(f"videos split folder not found: {folder}")
        return folder

    def episodes(self, split: str) -> list[Episode]:
        """One Episode per video file / frames folder (or per ``split_list`` line), sorted by id.

        Raises DatasetError when the split folder is missing, or the split list is missing or not
        UTF-8 text. Everything wrong with one episode quarantines that episode only.
        """
        folder = self._split_folder(split)
        found = _unique_ids(_scan(self.root, folder, self.options.allow_outside_root))
        if self.split_list is None:
            chosen: list[_Found | Episode] = list(found.values())
            listed = None
        else:
            listed = self.split_list.format(split=split)
            chosen = self._select(split, listed, found)
        resolve = Resolver(self.root, self.options.allow_outside_root)  # one listing per frames folder, not lstats per file
        episodes = [c if isinstance(c, Episode) else self._episode(split, c, resolve) for c in chosen if not _is_video(c)]
        videos = [c for c in chosen if _is_video(c)]
        if videos:
            # probing a video opens it with FFmpeg (~3 ms, the GIL released): in parallel threads,
            # 2.2x faster on 2 cores; the listing of a first extract is serial before any decode
            with ThreadPoolExecutor(min(8, usable_cores(), len(videos)), thread_name_prefix="navcache-probe") as pool:
                episodes += pool.map(lambda c: self._episode(split, c, resolve), videos)
        episodes.sort(key=lambda ep: ep.episode_id)
        self.report = {
            "split": split,
            "episodes": len(episodes),
            "quarantined": sum(ep.quarantine is not None for ep in episodes),
            "split_list": listed,
            "media_not_listed": [] if listed is None else sorted(set(found) - {ep.episode_id for ep in episodes}),
        }
        return episodes

    def _select(self, split: str, listed: str, found: dict[str, _Found]) -> list[_Found | Episode]:
        """The split list's ids, in file order, mapped to what the scan found."""
        try:
            path = resolve_under(self.root, listed, self.options.allow_outside_root)
        except UnsafePath as e:
            raise DatasetError(f"videos option 'split_list' for split {split!r}: {e}") from None
        if not path.is_file():
            raise DatasetError(f"videos split list not found: {self.root / listed}")
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise DatasetError(f"{path}: not UTF-8 text (byte {e.start}): {e.reason}") from None
        except OSError as e:
            raise DatasetError(f"{path}: cannot read: {e.strerror or e}") from None
        out: list[_Found | Episode] = []
        first_line: dict[str, int] = {}
        for lineno, line in enumerate(text.splitlines(), start=1):
            eid = line.strip()
            if not eid or eid.startswith("#"):
                continue
            where = f"{listed} line {lineno}"
            rec = {"split": split, "split_list": listed, "line": lineno, "listed_id": eid}
            if eid in first_line:
                # The duplicate gets a placeholder id so that episode ids stay unique in the cache index.
                out.append(Episode(f"<{where}>", rec, (), f"{where}: duplicate episode id {eid!r} (first listed on line {first_line[eid]})"))
                continue
            first_line[eid] = lineno
            if eid in found:
                out.append(found[eid])
                continue
            hint = " (ids are written without the file extension)" if Path(eid).suffix.lower() in VIDEO_EXTS else ""
            out.append(Episode(eid, rec, (), f"{where}: no video file or frames folder for episode id {eid!r} under the split folder{hint}"))
        return out

    def _episode(self, split: str, f: _Found, resolve: Resolver) -> Episode:
        media = Path(os.path.relpath(f.path, self.root)).as_posix()
        record: dict[str, Any] = {"split": split, "media": media, "kind": f.kind}

        def bad(reason: str) -> Episode:
            return Episode(f.episode_id, record, (), f"{media}: {reason}")

        if f.problem is not None:
            return bad(f.problem)
        try:
            if f.kind == "video":
                media_path = resolve_under(self.root, media, self.options.allow_outside_root)
                n, fps = _probe_video(media_path)
                frame_files: list[Path] = []
            else:
                names = _ordered_frames(f.path, f.images)
                n, fps = len(names), None
        except (Quarantine, UnsafePath, OSError) as e:
            return bad(_reason(e))
        record["n_frames"] = n
        if n < self.min_frames:
            return bad(f"has {n} frame{'s' if n != 1 else ''}, needs at least min_frames={self.min_frames}")
        idx = uniform_indices(n, self.num_frames).tolist()
        try:
            if f.kind == "frames":
                # Only the sampled frames are listed (and fingerprinted), as for NaVILA.
                frame_files = [resolve(f"{media}/{names[k]}") for k in idx]
            meta, meta_fps = self._meta(f)
            gt = self._sidecar(f, GT_SUFFIX)
        except (Quarantine, UnsafePath, OSError) as e:
            return bad(_reason(e))
        record.update({
            "sample_indices": idx,  # [N_m], N_m = min(num_frames, n_frames)
            "fps": fps if fps is not None else meta_fps,
            "meta": meta,
            "gt_geometry": None if gt is None else gt[0],  # relative to root; not loaded here (big)
        })
        files = (media_path,) if f.kind == "video" else tuple(frame_files)
        # the ground truth is last, after the frames read_frames takes from the front
        return Episode(f.episode_id, record, files + ((gt[1],) if gt is not None else ()), None)

    def _sidecar(self, f: _Found, suffix: str) -> tuple[str, Path] | None:
        """(path relative to root, resolved path) of the sidecar next to the media
        (``a/b.mp4`` -> ``a/b<suffix>``, folder ``a/b/`` -> ``a/b<suffix>``); None if absent."""
        stem = f.path.name if f.kind == "frames" else f.path.name[: -len(f.path.suffix)]
        p = f.path.parent / (stem + suffix)
        if not os.path.lexists(p):
            return None
        rel = Path(os.path.relpath(p, self.root)).as_posix()
        real = resolve_under(self.root, rel, self.options.allow_outside_root)
        if not real.is_file():
            raise Quarantine(f"sidecar {rel} is not a regular file")
        return rel, real

    def _meta(self, f: _Found) -> tuple[dict[str, Any], float | None]:
        """(metadata object from the .json sidecar or {}, its "fps" when a positive number)."""
        side = self._sidecar(f, META_SUFFIX)
        if side is None:
            return {}, None
        name, path = side
        size = path.stat().st_size
        if size > META_MAX_BYTES:
            raise Quarantine(f"metadata sidecar {name} is {size} bytes, more than {META_MAX_BYTES} (it goes into the cache index)")
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise Quarantine(f"metadata sidecar {name}: not UTF-8 text (byte {e.start}): {e.reason}") from None
        try:
            meta = json.loads(text, parse_constant=_refuse_constant)
        except json.JSONDecodeError as e:
            raise Quarantine(f"metadata sidecar {name}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        except RecursionError:
            raise Quarantine(f"metadata sidecar {name}: JSON nested too deeply") from None
        except ValueError as e:  # NaN / Infinity: records must stay strict JSON
            raise Quarantine(f"metadata sidecar {name}: {e}") from None
        if not isinstance(meta, dict):
            raise Quarantine(f"metadata sidecar {name}: expected a JSON object, got {type(meta).__name__}")
        fps = meta.get("fps")
        try:  # float() of an integer literal longer than a double overflows
            fps = float(fps) if isinstance(fps, (int, float)) and not isinstance(fps, bool) else None
        except OverflowError:
            fps = None
        return meta, fps if fps is not None and math.isfinite(fps) and fps > 0 else None

    # ------------------------------------------------------------------------------ decoding

    @staticmethod
    def _indices(episode: Episode, rec: DeclaredRecord, indices: Sequence[int] | None) -> list[int]:
        n = rec["n_frames"]
        if indices is None:
            return [int(k) for k in rec["sample_indices"]]
        return validate_indices(indices, n, episode.episode_id)

    def read_frames(self, episode: Episode, indices: Sequence[int] | None = None, *, resize_to: tuple[int, int] | None = None,
                    fit: bool = False) -> Frames:
        """The sampled frames (or ``indices``): pixels uint8 [T, H, W, 3] RGB, no padding.

        ``resize_to`` (width, height): frames-folder JPEGs at least twice that size come
        DCT-reduced (``decode.read_image``); an image above ``max_image_pixels`` is quarantined.
        With ``fit``: JPEGs of any size, and video frames from the decoder's scaler, reduced
        towards ``resize_to`` (``Source.read_frames``); else video frames come at full size.

        Raises Quarantine for a quarantined episode, an index outside [0, n_frames), a damaged or
        missing file, a frame count that changed since listing, or a short decode.
        """
        if episode.quarantine is not None:
            raise Quarantine(episode.quarantine)
        rec = declared_record(self, episode, ("frames",))
        idx = self._indices(episode, rec, indices)
        n = rec["n_frames"]
        if rec["kind"] == "video":

            def same_count(found: int) -> list[int]:
                # Disagreement with the listing's count means the sampling rule ran on the wrong n
                # (or the file changed since), so refuse.
                if found != n:
                    raise Quarantine(f"video {episode.files[0]}: decoder finds {found} frames, the container header said {n} when listed")
                return idx

            pixels, _ = self.decoded.read_sampled(episode.files[0], same_count, reduce_to=resize_to if fit else None)
        else:
            if indices is None:
                paths = list(episode.files[: len(idx)])  # exactly what was fingerprinted
            else:
                try:
                    folder = resolve_under(self.root, rec["media"], self.options.allow_outside_root)
                    names = _ordered_frames(folder)
                    if len(names) != n:
                        raise Quarantine(f"folder now has {len(names)} frames, {n} when listed")
                    paths = [resolve_under(self.root, f"{rec['media']}/{names[k]}", self.options.allow_outside_root) for k in idx]
                except (Quarantine, UnsafePath) as e:
                    raise Quarantine(f"{rec['media']}: {_reason(e)}") from None
            pixels = read_jpegs(paths, resize_to, self.options.max_image_pixels, fit=fit)
        if len(pixels) != len(idx):
            raise Quarantine(f"{rec['media']}: asked for {len(idx)} frames, got {len(pixels)}")
        return Frames(pixels=pixels, indices=np.asarray(idx, dtype=np.int64), padded=np.zeros(len(idx), dtype=bool))

    def load_gt_geometry(self, episode: Episode, indices: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """Ground truth of the sampled frames (or ``indices``) from the episode's ``.gt.npz``.

        The file holds ``depth`` float [n, H, W] z-depth in metres (<= 0 or non-finite: no depth),
        ``extrinsics`` float [n, 3, 4] OpenCV camera-from-world [R | t], and ``intrinsics`` float
        [3, 3] or [n, 3, 3] in pixels with pixel centres at integer coordinates; n = n_frames.
        Returns {"indices": int64 [T], "depth": float32 [T, H, W], "extrinsics": float64 [T, 3, 4],
        "intrinsics": float64 [T, 3, 3]}. Depth rows are streamed out of the archive, so memory
        holds the T sampled frames, not n. Raises Quarantine naming the file for a missing
        sidecar or key, a pickled array, a wrong shape/dtype, a frame count other than n_frames,
        or non-finite / non-rotation extrinsics.
        """
        if episode.quarantine is not None:
            raise Quarantine(episode.quarantine)
        rec = declared_record(self, episode, ("gt_geometry",))
        rel = rec.get("gt_geometry")
        if rel is None:
            raise Quarantine(f"{rec['media']}: no ground-truth geometry sidecar (<name>{GT_SUFFIX}) next to it")
        idx = self._indices(episode, rec, indices)
        try:
            path = resolve_under(self.root, rel, self.options.allow_outside_root)
        except UnsafePath as e:
            raise Quarantine(f"{rel}: {e}") from None
        try:
            return {"indices": np.asarray(idx, np.int64), **_read_gt(path, rec["n_frames"], idx)}
        except Quarantine as e:
            raise Quarantine(f"ground truth {rel}: {e.reason}") from None


# ---------------------------------------------------------------------------------- scanning


def _scan(root: Path, top: Path, allow_outside: bool = False) -> list[_Found]:
    """Every video file and frames folder under ``top`` (names only; nothing is opened).

    ``top`` is walked by its unresolved path, so ids and record paths keep the dataset's names
    even where a folder is a symlink (to somewhere under ``root``, or anywhere with ``allow_outside``).
    """
    found: list[_Found] = []

    def visit(d: Path, rel: str, real: str, chain: frozenset[str]) -> bool:
        """Walk folder ``d`` (real path ``real``); True when it holds media (then its parent is no
        frames folder). Path objects and ``realpath`` calls only for what is not a plain image:
        a frames folder's images cost the listing alone (the listing is serial before any decode)."""
        try:
            with os.scandir(d) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as e:
            found.append(_Found(rel or _SPLIT_FOLDER, "frames", d, rel, f"cannot list folder: {e.strerror or e}"))
            return True
        images: list[str] = []  # regular files (links followed) with an image extension, as _image_names
        has_images = has_videos = False
        media_subdirs: list[str] = []
        for e in entries:
            ext = os.path.splitext(e.name)[1].lower()
            try:
                is_dir = e.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if not is_dir and ext in IMAGE_EXTS:
                has_images = True
                if e.is_file():
                    images.append(e.name)
                continue
            if not is_dir and ext not in VIDEO_EXTS:
                continue
            p, r = d / e.name, f"{rel}/{e.name}" if rel else e.name
            link = e.is_symlink()
            if link:
                try:
                    resolved = resolve_under(root, os.path.relpath(p, root), allow_outside)
                except UnsafePath as err:
                    # Reported rather than skipped: a link is there on purpose, its refusal should show.
                    found.append(_Found(r if is_dir else _strip(r), "frames" if is_dir else "video", p, r, f"refused: {err}"))
                    has_videos |= not is_dir
                    if is_dir:
                        media_subdirs.append(e.name)
                    continue
                if is_dir and str(resolved) in chain:
                    continue  # a link back to an ancestor: walking it would never end
            if is_dir:
                # realpath(d/name) is realpath(d)/name unless name is a link
                sub = os.path.realpath(p) if link else os.path.join(real, e.name)
                if visit(p, r, sub, chain | {sub}):
                    media_subdirs.append(e.name)
            else:
                found.append(_Found(_strip(r), "video", p, r))
                has_videos = True
        if has_images:
            if not rel:
                found.append(_Found(_SPLIT_FOLDER, "frames", d, "", "images lie directly in the split folder; "
                                    "put each episode's frames in a folder of its own (its name is the episode id)"))
            elif media_subdirs:
                found.append(_Found(rel, "frames", d, rel, f"folder holds images and media subfolder(s) "
                                    f"{', '.join(media_subdirs[:3])}; an episode's frames need a folder of their own"))
            else:
                found.append(_Found(rel, "frames", d, rel, images=tuple(images)))
        return has_images or has_videos or bool(media_subdirs)

    top_real = os.path.realpath(top)
    visit(top, "", top_real, frozenset({top_real}))
    return found


def _is_video(c) -> bool:
    return isinstance(c, _Found) and c.kind == "video" and c.problem is None


def _strip(rel: str) -> str:
    """Episode id of a video: its path without the extension."""
    return rel[: -len(os.path.splitext(rel)[1])]


def _unique_ids(found: list[_Found]) -> dict[str, _Found]:
    """{episode id: item}; when two items share an id (``a.mp4`` and ``a.avi``, or ``a.mp4`` and
    folder ``a/``) the first by path keeps it and the others get a placeholder id, quarantined."""
    out: dict[str, _Found] = {}
    for f in sorted(found, key=lambda f: f.rel):
        if f.episode_id in out:
            other = out[f.episode_id].rel or _SPLIT_FOLDER
            ph = f"<duplicate {f.rel}>"
            out[ph] = _Found(ph, f.kind, f.path, f.rel, f"episode id {f.episode_id!r} is already taken by {other!r}; rename one of them")
        else:
            out[f.episode_id] = f
    return out


def _image_names(folder: Path) -> list[str]:
    return [e.name for e in os.scandir(folder) if not e.name.startswith(".")
            and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS and e.is_file()]


def _ordered_frames(folder: Path, names: Sequence[str] | None = None) -> list[str]:
    """Image names of a frames folder in frame order (natural sort on the number in the name).

    Raises Quarantine when a name has no number, names follow different patterns
    (``frame_001.jpg`` and ``depth_001.png``), or two names carry the same number.
    """
    try:
        names = sorted(_image_names(folder) if names is None else names)
    except OSError as e:
        raise Quarantine(f"cannot list frames folder: {e.strerror or e}") from None
    if not names:
        raise Quarantine("frames folder holds no images")
    keyed: dict[int, str] = {}
    pattern, first = None, None
    for name in names:
        stem, ext = os.path.splitext(name)
        m = _NUMBERED.match(stem)
        if m is None:
            raise Quarantine(f"frame {name!r} has no number in its name (frames are ordered by that number)")
        p = (m.group(1), m.group(3), ext.lower())
        if pattern is None:
            pattern, first = p, name
        elif p != pattern:
            raise Quarantine(f"frame names follow different patterns: {first!r} and {name!r}")
        k = int(m.group(2))
        if k in keyed:
            raise Quarantine(f"frames {keyed[k]!r} and {name!r} both have number {k}")
        keyed[k] = name
    return [keyed[k] for k in sorted(keyed)]


# ---------------------------------------------------------------------------------- videos


def _probe_video(path: Path) -> tuple[int, float | None]:
    """(frame count, fps or None) from the container, without decoding.

    The mp4 checks (boxes tile the file, the sample table points into the media data) quarantine
    truncated and re-boxed files here already. The count is the sample table's for mp4/mov, the
    header's for avi, and the counted packets for mkv/webm (which state none); ``read_frames``
    decodes every frame and checks the count again.
    """
    size = check_file(path, "video")
    check_mp4(path, size)
    with StrictVideoReader(path) as reader:
        return reader.info.n_frames, reader.info.fps


# ----------------------------------------------------------------------------- ground truth


def _read_gt(path: Path, n: int, idx: list[int]) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            for key in ("depth", "extrinsics", "intrinsics"):
                if f"{key}.npy" not in names:
                    raise Quarantine(f"missing array {key!r} (has {', '.join(sorted(m[:-4] for m in names if m.endswith('.npy'))) or 'none'})")
            extr = _check_extrinsics(_read_member(zf, "extrinsics"), n)
            intr = _check_intrinsics(_read_member(zf, "intrinsics"), n)
            depth = _read_depth_rows(zf, n, idx)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise Quarantine(f"not a readable .npz archive: {e}") from None
    intr = intr[idx] if intr.ndim == 3 else np.broadcast_to(intr, (len(idx), 3, 3)).copy()
    return {"depth": depth, "extrinsics": extr[idx], "intrinsics": intr}


def _open_npy(zf: zipfile.ZipFile, key: str):
    """(open member, shape, fortran_order, dtype) with the .npy header read; refuses pickles."""
    f = zf.open(f"{key}.npy")
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise Quarantine(f"array {key!r}: unsupported .npy format version {version}")
    except ValueError as e:
        f.close()
        raise Quarantine(f"array {key!r}: not a .npy array: {e}") from None
    except Quarantine:
        f.close()
        raise
    if dtype.hasobject:
        f.close()
        raise Quarantine(f"array {key!r} holds Python objects (a pickle); refused, store plain numeric arrays")
    return f, shape, fortran, dtype


def _read_member(zf: zipfile.ZipFile, key: str) -> np.ndarray:
    f, shape, fortran, dtype = _open_npy(zf, key)
    with f:
        data = _read_exact(f, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, key)
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def _read_exact(f, nbytes: int, key: str) -> bytes:
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise Quarantine(f"array {key!r} is truncated ({len(data)} of {nbytes} bytes)")
    return data


def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f"


def _check_extrinsics(e: np.ndarray, n: int) -> np.ndarray:
    if not _is_float(e.dtype) or e.ndim != 3 or e.shape[1:] != (3, 4):
        raise Quarantine(f"'extrinsics' must be float [n, 3, 4], got {e.dtype} {list(e.shape)}")
    if e.shape[0] != n:
        raise Quarantine(f"'extrinsics' has {e.shape[0]} frames, the episode has {n}")
    e = e.astype(np.float64)
    bad = np.nonzero(~np.isfinite(e).all(axis=(1, 2)))[0]
    if len(bad):
        raise Quarantine(f"'extrinsics' is not finite (NaN/inf) at frame {int(bad[0])} ({len(bad)} frame(s) in all)")
    r = e[:, :, :3]
    err = np.abs(r @ r.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2))
    off = np.nonzero((err > ROTATION_TOL) | (np.linalg.det(r) <= 0))[0]
    if len(off):
        k = int(off[0])
        raise Quarantine(f"'extrinsics' frame {k}: the 3x3 part is not a rotation (|R R^T - I| = {err[k]:.3g}, "
                         f"det = {np.linalg.det(r[k]):.3g}); expected OpenCV camera-from-world [R | t]")
    return e


def _check_intrinsics(k: np.ndarray, n: int) -> np.ndarray:
    if not _is_float(k.dtype) or k.shape[-2:] != (3, 3) or k.ndim not in (2, 3):
        raise Quarantine(f"'intrinsics' must be float [3, 3] or [n, 3, 3], got {k.dtype} {list(k.shape)}")
    if k.ndim == 3 and k.shape[0] != n:
        raise Quarantine(f"'intrinsics' has {k.shape[0]} frames, the episode has {n}")
    k = k.astype(np.float64)
    if not np.isfinite(k).all():
        raise Quarantine("'intrinsics' is not finite (NaN/inf)")
    if (k[..., 0, 0] <= 0).any() or (k[..., 1, 1] <= 0).any() or not np.allclose(k[..., 2, :], [0, 0, 1]):
        raise Quarantine("'intrinsics' must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0")
    return k


def _read_depth_rows(zf: zipfile.ZipFile, n: int, idx: list[int]) -> np.ndarray:
    """float32 [len(idx), H, W]: the rows ``idx`` of ``depth``, decompressed front to back and
    keeping only those rows, so a long episode's depth never sits in memory whole."""
    f, shape, fortran, dtype = _open_npy(zf, "depth")
    with f:
        if not _is_float(dtype) or len(shape) != 3:
            raise Quarantine(f"'depth' must be float [n, H, W] metres, got {dtype} {list(shape)}")
        if shape[0] != n:
            raise Quarantine(f"'depth' has {shape[0]} frames, the episode has {n}")
        if fortran:  # frames are not contiguous in the stream: no choice but to load it all
            full = np.frombuffer(_read_exact(f, int(np.prod(shape)) * dtype.itemsize, "depth"), dtype).reshape(shape, order="F")
            return full[idx].astype(np.float32)
        frame_bytes = int(shape[1]) * int(shape[2]) * dtype.itemsize
        rows: dict[int, np.ndarray] = {}
        pos = 0
        for k in sorted(set(idx)):
            gap = (k - pos) * frame_bytes
            while gap > 0:
                step = min(gap, _SKIP_CHUNK)
                _read_exact(f, step, "depth")
                gap -= step
            rows[k] = np.frombuffer(_read_exact(f, frame_bytes, "depth"), dtype).reshape(shape[1:]).astype(np.float32)
            pos = k + 1
    return np.stack([rows[k] for k in idx])


# ------------------------------------------------------------------------------------ helpers


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON (records must be strict JSON)")


def _reason(e: Exception) -> str:
    if isinstance(e, Quarantine):
        return e.reason
    if isinstance(e, OSError):
        return f"cannot read {e.filename or 'file'}: {e.strerror or e}"
    return f"unsafe path: {e}"
