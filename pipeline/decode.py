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

import os
import struct
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from navcache.pipeline.errors import Quarantine
from navcache.pipeline.video_check import check_iso_bmff_complete, check_mp4
from navcache.pipeline.video_reader import StrictVideoReader

__all__ = ["DEFAULT_MAX_PIXELS", "DecodedFrames", "DecodedVideoFrames", "VIDEO_MEMO_BYTES", "black_frames", "check_iso_bmff_complete", "image_header_size", "read_image", "read_jpegs", "read_video", "read_video_sampled", "reduction"]


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
    size: tuple[int, int] | None = None,
    reduce_to: tuple[int, int] | None = None,
) -> tuple[np.ndarray, int]:
    """Decode the frames ``sample(n_frames)`` chooses, opening the file once.

    Returns ``(pixels, n_frames)``: pixels uint8 [K, H, W, 3] RGB with K = len(sample(n)) rows in
    the requested order; with ``size`` = (width, height) the decoder's own scaler delivers the
    frames at that size ([K, height, width, 3], ``StrictVideoReader.frames``), never at full size.
    ``reduce_to`` (when ``size`` is None): the (width, height) the consumer resizes to; the scaler
    then delivers 1/2, 1/4 or 1/8 of the stored size, the smallest still covering it
    (``reduction(..., fit=True)``, the rule JPEGs follow), else full size.
    ``sample`` may itself raise Quarantine (e.g. "clip too short").
    Raises Quarantine for every kind of damage listed in the module docstring, for a frame count
    other than ``expected_frames``, and for out-of-range indices.
    """
    path = Path(path)
    nbytes = check_file(path, "video")
    tables = check_mp4(path, nbytes)
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
        pixels = reader.frames(idx, size=_scaled_size(reader.info.width, reader.info.height, size, reduce_to))
    return pixels, n


def _scaled_size(w: int, h: int, size: tuple[int, int] | None, reduce_to: tuple[int, int] | None) -> tuple[int, int] | None:
    """The (width, height) the decoder's scaler delivers for a w x h stream (None: full size);
    ``read_video_sampled``'s ``size`` / ``reduce_to`` rule."""
    if size is None and reduce_to is not None:
        s = reduction((w, h), reduce_to, fit=True)
        return None if s == 1 else (w // s, h // s)
    return size


#: default byte budget of a source's ``DecodedVideoFrames`` (``run.decoded_frames_mb`` sets it per run)
VIDEO_MEMO_BYTES = 256 << 20


class DecodedVideoFrames:
    """Video frames decoded in one run, keyed by (the file's content hash, frame index, the
    request's ``size`` / ``reduce_to``); least recently used dropped beyond ``max_bytes``; thread-safe (decode threads share it).

    Samples share frames: two rover rows naming one clip, hard-linked or copied files, stages of
    one run reading the same episode (frame-features, then geometry). ``read_sampled`` is
    ``read_video_sampled`` except that a request whose frames are all here decodes nothing: the
    same content was decoded, and checked whole (strict reader, counts), earlier in the run, so
    its pixels are the ones a new pass would give. Otherwise one full pass as always, and the
    sampled frames are kept. Keys hash the content (sha256, memoised per file version by stat),
    so a path that now holds other bytes never hits. Hand-rolled on OrderedDict for the same
    reason as ``DecodedFrames`` (bounded in bytes, not entries). ``passes`` counts decoding passes.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes, self.passes = max_bytes, 0, 0
        self._frames: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._streams: dict[bytes, int] = {}  # content -> n_frames, of a stream decoded and checked whole
        self._digests: dict[tuple, bytes] = {}  # file version (stat) -> content hash
        self._lock = threading.Lock()

    def content(self, path: Path) -> bytes | None:
        """sha256 of the file's bytes, once per file version; None when it cannot be read."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        version = (os.fspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        with self._lock:
            got = self._digests.get(version)
        if got is None:
            import hashlib

            h = hashlib.sha256()
            try:
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
            except OSError:
                return None
            got = h.digest()
            with self._lock:
                self._digests[version] = got
        return got

    def read_sampled(self, path: Path, sample: Callable[[int], Sequence[int]], expected_frames: int | None = None,
                     size: tuple[int, int] | None = None, reduce_to: tuple[int, int] | None = None) -> tuple[np.ndarray, int]:
        """``read_video_sampled(path, sample, expected_frames, size, reduce_to)``: same pixels
        (uint8 [K, H, W, 3], a fresh array), same Quarantines, decoding only when a frame is missing."""
        path = Path(path)
        key = self.content(path)
        with self._lock:
            stream = self._streams.get(key) if key is not None else None
        scale = (None if size is None else tuple(size), None if reduce_to is None else tuple(reduce_to))
        if stream is not None:
            n = stream
            if expected_frames is not None and n != expected_frames:
                raise Quarantine(f"video {path}: decoder finds {n} frames, annotation says {expected_frames}")
            idx = validate_indices(sample(n), n, path)
            hit = self.lookup([(key, i, scale) for i in idx])
            if hit is not None:
                return hit, n
            fixed = idx
            sample = lambda _n: fixed  # noqa: E731 - the indices were chosen on this same n
        chosen: list[int] = []

        def remember(found: int) -> Sequence[int]:
            chosen[:] = [int(i) for i in sample(found)]
            return chosen

        with self._lock:
            self.passes += 1
        pixels, n = read_video_sampled(path, remember, expected_frames, size, reduce_to)
        if key is None:
            return pixels, n
        with self._lock:
            self._streams[key] = n
        self.store([(key, i, scale) for i in chosen], pixels)
        return pixels, n

    def lookup(self, keys: Sequence[tuple]) -> np.ndarray | None:
        """The frames under ``keys`` stacked (uint8 [K, H, W, 3], a fresh array), or None unless every
        one is here. For a source with its own reading rules (LeRobot segments): keys start with
        ``content(path)``, so a file rewritten in the run never hits."""
        with self._lock:
            hits = [self._frames.get(k) for k in keys]
            if any(h is None for h in hits) or not hits:
                return None
            for k in keys:
                self._frames.move_to_end(k)
        return np.stack(hits)

    def store(self, keys: Sequence[tuple], frames: np.ndarray) -> None:
        """Keep ``frames[j]`` under ``keys[j]`` (copies, read-only) within the byte budget."""
        with self._lock:
            for k, frame in zip(keys, frames):
                if k in self._frames or frame.nbytes > self.max_bytes:
                    continue
                kept = frame.copy()
                kept.flags.writeable = False
                self._frames[k] = kept
                self.bytes += kept.nbytes
                while self.bytes > self.max_bytes:
                    _, old = self._frames.popitem(last=False)
                    self.bytes -= old.nbytes

    def count_pass(self) -> None:
        with self._lock:
            self.passes += 1


def read_video(
    path: Path,
    indices: Sequence[int] | None,
    expected_frames: int | None = None,
    size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, int]:
    """Decode frames ``indices`` (all frames when None) of the video at ``path`` (scaled to ``size``
    = (width, height) by the decoder's scaler when given).

    Returns ``(pixels, n_frames)``: pixels uint8 [K, H, W, 3] RGB, K = len(indices) (or n_frames),
    rows in the order of ``indices``; n_frames is the video's frame count.
    Raises Quarantine when the file is missing, empty, not a video, truncated, has a frame count
    other than ``expected_frames``, or when an index is out of range or the batch comes back short.
    """
    if indices is None:
        return read_video_sampled(path, lambda n: range(n), expected_frames, size)
    fixed = list(indices)
    return read_video_sampled(path, lambda n: fixed, expected_frames, size)


# -------------------------------------------------------------------------------------- images

_JPEG_SOI, _JPEG_EOI = b"\xff\xd8", b"\xff\xd9"
_PNG_MAGIC, _PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
# Keep the stored pixel orientation: NaVILA reads frames with PIL, which ignores EXIF rotation,
# while cv2.IMREAD_COLOR alone would apply it.
_IMREAD_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
#: JPEG DCT scaling: libjpeg decodes straight to 1/2, 1/4 or 1/8 of the size, never holding the full image
_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
#: only images above this are decoded reduced (``reduction``): 16 Mpx is about twice a 4K UHD frame (8.3 Mpx)
REDUCE_ABOVE_PIXELS = 16_000_000
#: default ``max_pixels``, the sources' ``max_image_pixels`` option's (``sources.options.MAX_IMAGE_PIXELS``)
DEFAULT_MAX_PIXELS = 64_000_000
# start-of-frame markers (baseline, progressive, lossless, arithmetic...): they carry the image size.
# C4 (DHT), C8 (JPG) and CC (DAC) lie in the same range but are tables.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# markers without a length field: TEM, RST0-7 (SOI/EOI never occur inside the header walk)
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _check_image_complete(raw: bytes, path: Path) -> None:
    """Quarantine a JPEG without its end-of-image marker or a PNG without its IEND chunk."""
    if raw.startswith(_JPEG_SOI):
        # Some writers pad files with zero bytes after EOI; the image itself is still complete.
        if not raw.rstrip(b"\x00").endswith(_JPEG_EOI):
            raise Quarantine(f"truncated JPEG {path}: no end-of-image marker (FF D9) at the end of its {len(raw)} bytes")
    elif raw.startswith(_PNG_MAGIC):
        if not raw.rstrip(b"\x00").endswith(_PNG_IEND):
            raise Quarantine(f"truncated PNG {path}: no IEND chunk at the end of its {len(raw)} bytes")


def image_header_size(raw: bytes) -> tuple[int, int] | None:
    """(width, height) a JPEG's start-of-frame or a PNG's IHDR states; None for other formats or
    a header that states no size (a JPEG whose height comes later, in a DNL marker).

    Hand-rolled on purpose: the size must be known *before* anything is decoded, and the libraries
    at hand cannot tell it safely: OpenCV has no header-only call, and PIL's ``Image.open`` raises
    ``DecompressionBombError`` without the size above twice its process-wide ``MAX_IMAGE_PIXELS``
    (changing that global would be hidden state). Both fields sit at offsets the JPEG (ITU T.81
    B.2.2) and PNG (RFC 2083 4.1.1) standards fix; only segment headers are read.
    """
    if raw.startswith(_PNG_MAGIC):
        if len(raw) < 24 or raw[12:16] != b"IHDR":
            return None
        w, h = struct.unpack(">II", raw[16:24])
        return w, h
    if not raw.startswith(_JPEG_SOI):
        return None
    i = 2
    while i + 4 <= len(raw):
        if raw[i] != 0xFF:
            return None  # not at a marker: damaged header, leave it to the decoder
        marker = raw[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _JPEG_STANDALONE:
            i += 2
            continue
        length = struct.unpack(">H", raw[i + 2 : i + 4])[0]
        if marker in _JPEG_SOF:
            if i + 9 > len(raw):
                return None
            h, w = struct.unpack(">HH", raw[i + 5 : i + 9])
            return (w, h) if h > 0 else None
        if marker == 0xDA:  # start of scan before any frame header: not a valid JPEG
            return None
        i += 2 + length
    return None


def reduction(size: tuple[int, int], resize_to: tuple[int, int] | None, fit: bool = False) -> int:
    """The largest reduction 1/s (s in 1, 2, 4, 8) whose output still covers ``resize_to``,
    for an image above ``REDUCE_ABOVE_PIXELS`` (any image with ``fit``); 1 (full size) for every other.

    ``size`` is the image's (width, height), ``resize_to`` the (width, height) the consumer resizes
    to (None: full size). So an image is reduced only when it is huge *and* at least twice as large
    as needed in both directions. Every frame up to 4K UHD decodes exactly as before: caches built
    from such frames stay valid (their fingerprints do not change) and rebuilding them gives the
    same bytes. A reduced image reaches the consumer's (antialiased) resize already downscaled,
    so its result differs slightly from resizing the full image; memory is what it buys.
    ``fit`` (the fast feed, ``bench/feed_rate.py``) reduces frames of every size, buying decode time
    and a smaller resize at the same price in pixels: a 512x512 JPEG for a 224x224 encoder decodes
    at 256x256.
    """
    w, h = size
    if resize_to is None or (w * h <= REDUCE_ABOVE_PIXELS and not fit):
        return 1
    nw, nh = resize_to
    for s in (8, 4, 2):
        if w >= s * nw and h >= s * nh:
            return s
    return 1


def read_image(path: Path, resize_to: tuple[int, int] | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               fit: bool = False) -> np.ndarray:
    """One image file (JPEG, or anything OpenCV decodes) as uint8 [H', W', 3] RGB.

    ``resize_to``: the (width, height) the caller will resize to; an image above 16 Mpx and at
    least twice that size comes at 1/2, 1/4 or 1/8 scale (``reduction``), so [H', W'] lies between
    the full size and ``resize_to``: a JPEG by libjpeg's DCT scaling (never whole in memory), a PNG
    decoded whole and shrunk by OpenCV; every other image comes at full size. ``max_pixels``: an
    image whose header states more pixels is quarantined with its size before any decoding (None: no limit).
    ``fit``: reduce images of any size, not only huge ones (``reduction``); pixels then differ
    from a full-size decode resized to ``resize_to``.
    """
    return _read_image(Path(path), resize_to, max_pixels, fit)[0]


def _read_image(path: Path, resize_to: tuple[int, int] | None, max_pixels: int | None,
                fit: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    """``read_image``'s pixels and the image's full (width, height), reduced or not."""
    check_file(path, "image")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise Quarantine(f"cannot read image {path}: {e.strerror or e}") from None
    raw = data.tobytes()
    _check_image_complete(raw, path)
    size = image_header_size(raw)
    del raw
    if size is not None:
        _check_pixels(path, size, max_pixels)
    # a PNG has no scaled decoding: OpenCV decodes it whole (at most max_pixels) and shrinks it at once
    s = reduction(size, resize_to, fit) if size is not None else 1
    flags = _IMREAD_FLAGS if s == 1 else _REDUCED[s] | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        bgr = cv2.imdecode(data, flags)
    except cv2.error as e:
        raise Quarantine(f"cannot decode image {path}: {_short(e)}") from None
    del data
    if bgr is None:
        raise Quarantine(f"cannot decode image {path}: not an image or corrupt")
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8 or 0 in bgr.shape:
        raise Quarantine(f"image {path} decoded to {bgr.dtype} {bgr.shape}, expected uint8 [H,W,3]")
    if size is None:  # a format whose header is not read here: refused after decoding, before it is kept
        size = (bgr.shape[1], bgr.shape[0])
        _check_pixels(path, size, max_pixels)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size


def _check_pixels(path: Path, size: tuple[int, int], max_pixels: int | None) -> None:
    w, h = size
    if max_pixels is not None and w * h > max_pixels:
        raise Quarantine(
            f"image {path} is {w}x{h} ({w * h / 1e6:.1f} Mpx), above the limit of {max_pixels / 1e6:g} Mpx "
            f"(source option max_image_pixels)"
        )


class DecodedFrames:
    """Decoded images of one run, by file version and decode settings, least recently used dropped
    beyond ``max_bytes``; thread-safe (decode threads share it).

    NaVILA samples are histories: consecutive samples of an episode name most of the same frames,
    so decoding per sample repeats the decoder ~2.5x on the demo, far more on R2R. The key is
    (path, size, mtime, ctime, inode, decode settings): a file rewritten during the run has a new
    key, so a hit is always the bytes on disk decoded the same way. Bounded in bytes so memory
    does not grow with the dataset; samples come in id order, so a frame's reuses are close
    together. Hand-rolled on OrderedDict (a dozen lines): ``functools.lru_cache`` bounds entries,
    not bytes. ``decodes`` counts images actually decoded through it.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes, self.decodes = max_bytes, 0, 0
        self._d: OrderedDict[tuple, tuple[np.ndarray, tuple[int, int]]] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, path: Path, resize_to: tuple[int, int] | None, max_pixels: int | None, fit: bool) -> tuple[np.ndarray, tuple[int, int]]:
        """``_read_image(path, ...)`` (pixels read-only, shared), decoded once per file version."""
        try:
            st = os.stat(path)
        except OSError:
            return _read_image(path, resize_to, max_pixels, fit)  # raises Quarantine naming the problem
        key = (os.fspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, resize_to, max_pixels, fit)
        with self._lock:
            hit = self._d.get(key)
            if hit is not None:
                self._d.move_to_end(key)
                return hit
        img, size = _read_image(path, resize_to, max_pixels, fit)
        img.flags.writeable = False  # shared by every sample naming this frame
        with self._lock:
            self.decodes += 1
            if key not in self._d and img.nbytes <= self.max_bytes:
                self._d[key] = (img, size)
                self.bytes += img.nbytes
                while self.bytes > self.max_bytes:
                    _, (old, _) = self._d.popitem(last=False)
                    self.bytes -= old.nbytes
        return img, size


def read_jpegs(paths: Sequence[Path], resize_to: tuple[int, int] | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               fit: bool = False, memo: DecodedFrames | None = None) -> np.ndarray:
    """Decode image files into one uint8 [K, H, W, 3] RGB array, rows in the order of ``paths``.

    ``resize_to``, ``max_pixels`` and ``fit`` as in ``read_image``: with ``resize_to``, large JPEGs arrive
    reduced, all by the same factor (files of one size share it). ``memo``: images decoded earlier
    in the run are copied from it, new ones decoded and kept there (equal pixels). Raises Quarantine
    naming the file when one is missing, empty, truncated, undecodable, above ``max_pixels``, or
    has a size different from the first frame's.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("read_jpegs needs at least one path")
    read = _read_image if memo is None else memo.read
    first, size0 = read(paths[0], resize_to, max_pixels, fit)
    out = np.empty((len(paths), *first.shape), dtype=np.uint8)  # one allocation, no list of frames
    out[0] = first
    for j, p in enumerate(paths[1:], start=1):
        img, size = read(p, resize_to, max_pixels, fit)
        if size != size0 or img.shape != first.shape:
            raise Quarantine(f"frame size mismatch: {p} is {size[0]}x{size[1]}, {paths[0]} is {size0[0]}x{size0[1]}")
        out[j] = img
    return out
