"""Frame decoding that never hands back fewer or damaged frames without saying so.

Decoders are lenient on purpose: ffmpeg conceals damaged slices and a truncated last packet,
decord builds its frame count from whatever packets it could read and cannot turn concealment
off, and older OpenCV builds decode half a JPEG with only a warning. A cache built from such
output is silently wrong, so every function here checks counts, shapes and file completeness and
raises ``Quarantine`` (naming the file) instead.

Videos go through three gates, cheapest first:
  * ``video_check.check_mp4``: an mp4/mov's boxes tile the file (a cut file ends inside a box)
    and its sample table points inside the media data (a moved ``moov``, a box inserted before
    ``mdat`` or a shifted ``stco`` decode plausible frames from the wrong bytes);
  * ``video_reader.StrictVideoReader``: PyAV with error detection on, concealment off and one
    thread, decoding the whole stream, so a damaged slice raises and the same file always gives
    the same frames;
  * counts: the decoded count equals the container's, the annotation's (``expected_frames``), and
    for containers without a sample table (avi, mkv) OpenCV's header count.
decord is no longer used for decoding (``bench/video_fuzz.py`` keeps it as the "before" column).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from navcache.pipeline.errors import Quarantine
from navcache.pipeline.video_check import check_iso_bmff_complete, check_mp4
from navcache.pipeline.video_reader import StrictVideoReader

__all__ = ["black_frames", "check_iso_bmff_complete", "read_jpegs", "read_video", "read_video_sampled"]


def black_frames(k: int, h: int, w: int) -> np.ndarray:
    """``k`` black RGB frames: uint8 [k, h, w, 3] of zeros (NaVILA's padding images)."""
    if min(k, h, w) < 0:
        raise ValueError(f"black_frames needs non-negative sizes, got k={k} h={h} w={w}")
    return np.zeros((k, h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------- files


def check_file(path: Path, what: str) -> int:
    """Size in bytes of ``path``; Quarantine if it is missing, not a regular file, or empty."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise Quarantine(f"missing {what} file: {path}") from None
    except OSError as e:
        raise Quarantine(f"cannot stat {what} file {path}: {e.strerror or e}") from None
    if not path.is_file():
        raise Quarantine(f"{what} path is not a regular file: {path}")
    if st.st_size == 0:
        raise Quarantine(f"empty {what} file (0 bytes): {path}")
    return st.st_size


def _short(err: BaseException) -> str:
    """The last line of a decord/OpenCV error, without its C++ source location."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else type(err).__name__
    return text[-300:]


# --------------------------------------------------------------------------------------- video

def _container_frame_count(path: Path) -> int | None:
    """Frame count stated by the container according to OpenCV's ffmpeg backend; None if unknown."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return None
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    finally:
        cap.release()
    return int(count) if count and count > 0 else None


def validate_indices(indices: Sequence[int], n: int, what: object) -> list[int]:
    """Plain ints, each in [0, n); a decoder indexing from the end would take -1 as the last frame.

    Raises Quarantine naming ``what`` (a path or an episode id) for an index out of range.
    """
    out = []
    for i in indices:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"frame indices must be integers, got {type(i).__name__} {i!r}")
        if not 0 <= int(i) < n:
            raise Quarantine(f"frame index {int(i)} out of range for {n} frames of {what}")
        out.append(int(i))
    if not out:
        raise ValueError(f"no frame indices requested for {what}")
    return out


def read_video_sampled(
    path: Path,
    sample: Callable[[int], Sequence[int]],
    expected_frames: int | None = None,
) -> tuple[np.ndarray, int]:
    """Decode the frames ``sample(n_frames)`` chooses, opening the file once.

    Returns ``(pixels, n_frames)``: pixels uint8 [K, H, W, 3] RGB with K = len(sample(n)) rows in
    the requested order. ``sample`` may itself raise Quarantine (e.g. "clip too short").
    Raises Quarantine for every kind of damage listed in the module docstring, for a frame count
    other than ``expected_frames``, and for out-of-range indices.
    """
    path = Path(path)
    size = check_file(path, "video")
    tables = check_mp4(path, size)
    with StrictVideoReader(path) as reader:
        n = reader.info.n_frames
        if n <= 0:
            raise Quarantine(f"video {path} has no decodable frames")
        if tables is not None and tables.video_samples not in (None, n):
            raise Quarantine(f"video {path}: the sample table lists {tables.video_samples} frames, the demuxer {n}")
        if expected_frames is not None and n != expected_frames:
            raise Quarantine(f"video {path}: decoder finds {n} frames, annotation says {expected_frames}")
        # An avi/mkv has no sample table to check; its header count is a second opinion that
        # disagrees when the file was cut short.
        stated = _container_frame_count(path) if tables is None else None
        if stated is not None and stated != n:
            said = f", annotation says {expected_frames}" if expected_frames is not None else ""
            raise Quarantine(f"video {path}: container states {stated} frames, decoder finds {n}{said} (truncated?)")
        idx = validate_indices(sample(n), n, path)
        pixels = reader.frames(idx)
    return pixels, n


def read_video(
    path: Path,
    indices: Sequence[int] | None,
    expected_frames: int | None = None,
) -> tuple[np.ndarray, int]:
    """Decode frames ``indices`` (all frames when None) of the video at ``path``.

    Returns ``(pixels, n_frames)``: pixels uint8 [K, H, W, 3] RGB, K = len(indices) (or n_frames),
    rows in the order of ``indices``; n_frames is the video's frame count.
    Raises Quarantine when the file is missing, empty, not a video, truncated, has a frame count
    other than ``expected_frames``, or when an index is out of range or the batch comes back short.
    """
    if indices is None:
        return read_video_sampled(path, lambda n: range(n), expected_frames)
    fixed = list(indices)
    return read_video_sampled(path, lambda n: fixed, expected_frames)


# -------------------------------------------------------------------------------------- images

_JPEG_SOI, _JPEG_EOI = b"\xff\xd8", b"\xff\xd9"
_PNG_MAGIC, _PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
# Keep the stored pixel orientation: NaVILA reads frames with PIL, which ignores EXIF rotation,
# while cv2.IMREAD_COLOR alone would apply it.
_IMREAD_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


def _check_image_complete(data: np.ndarray, path: Path) -> None:
    """Quarantine a JPEG without its end-of-image marker or a PNG without its IEND chunk."""
    raw = data.tobytes()
    if raw.startswith(_JPEG_SOI):
        # Some writers pad files with zero bytes after EOI; the image itself is still complete.
        if not raw.rstrip(b"\x00").endswith(_JPEG_EOI):
            raise Quarantine(f"truncated JPEG {path}: no end-of-image marker (FF D9) at the end of its {len(raw)} bytes")
    elif raw.startswith(_PNG_MAGIC):
        if not raw.rstrip(b"\x00").endswith(_PNG_IEND):
            raise Quarantine(f"truncated PNG {path}: no IEND chunk at the end of its {len(raw)} bytes")


def read_image(path: Path) -> np.ndarray:
    """One image file (JPEG, or anything OpenCV decodes) as uint8 [H, W, 3] RGB."""
    path = Path(path)
    check_file(path, "image")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise Quarantine(f"cannot read image {path}: {e.strerror or e}") from None
    _check_image_complete(data, path)
    try:
        bgr = cv2.imdecode(data, _IMREAD_FLAGS)
    except cv2.error as e:
        raise Quarantine(f"cannot decode image {path}: {_short(e)}") from None
    if bgr is None:
        raise Quarantine(f"cannot decode image {path}: not an image or corrupt")
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8 or 0 in bgr.shape:
        raise Quarantine(f"image {path} decoded to {bgr.dtype} {bgr.shape}, expected uint8 [H,W,3]")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_jpegs(paths: Sequence[Path]) -> np.ndarray:
    """Decode image files into one uint8 [K, H, W, 3] RGB array, rows in the order of ``paths``.

    Raises Quarantine naming the file when one is missing, empty, truncated, undecodable, or has a
    size different from the first frame's.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("read_jpegs needs at least one path")
    first = read_image(paths[0])
    out = np.empty((len(paths), *first.shape), dtype=np.uint8)  # one allocation, no list of frames
    out[0] = first
    for j, p in enumerate(paths[1:], start=1):
        img = read_image(p)
        if img.shape != first.shape:
            raise Quarantine(
                f"frame size mismatch: {p} is {img.shape[1]}x{img.shape[0]}, "
                f"{paths[0]} is {first.shape[1]}x{first.shape[0]}"
            )
        out[j] = img
    return out
