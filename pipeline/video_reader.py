"""Strict video decoding with PyAV: frames by index, every decode error an error, counts checked.

decord (and OpenCV) decode with FFmpeg's defaults: error detection off and concealment on, so a
damaged slice is painted over from neighbouring blocks and the frame comes back looking plausible;
decord offers no way to change that. Here the codec context decodes with

  * ``err_detect=crccheck+bitstream+buffer+explode``: check what can be checked and fail the
    packet at the first inconsistency. The decoder returns the error before its concealment pass
    would run, so nothing is painted over. (``ec=0`` is not set on top: with libavcodec 62.28 it
    makes the h264 decoder flag every frame of an intact libx264 clip as corrupt, which would blind
    the corrupt-frame check below; measured, it changed no mpeg4 outcome of the fuzz set.)
  * one thread, no frame or slice threads: FFmpeg's threaded decoders can report a damaged stream
    differently from run to run, and PyAV issue 2344 crashes in a threaded decoder whose
    parameters are missing. One thread decodes the same bytes to the same frames, every time.

Any decoder error, any packet or frame FFmpeg flags as corrupt, a frame of another size, and a
decoded count other than the container's are reported as ``Quarantine`` with a plain-words reason
(the FFmpeg error class in brackets, never the raw ``avcodec_send_packet`` text).

``frames`` decodes the whole stream front to back, every time: an error in a frame that is not sampled
still damages the frames predicted from it, and a full pass is what proves the count. Frames not
asked for are never converted to RGB. ``segment`` serves files that hold several episodes
(LeRobot v3.0): it seeks to one episode's time range and decodes that segment only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import av
import numpy as np

from navcache.pipeline.errors import Quarantine

__all__ = ["STRICT_DECODER_OPTIONS", "StrictVideoReader", "VideoInfo"]

#: FFmpeg AVCodecContext options of every decode (see the module docstring).
STRICT_DECODER_OPTIONS = {"err_detect": "crccheck+bitstream+buffer+explode"}
#: swscale filter of ``frames(size=...)``: AREA averages every source pixel into the smaller frame
#: (no aliasing, like the encoders' antialiased resizes) at about the cost of BILINEAR
SCALE_INTERPOLATION = "AREA"


@dataclass(frozen=True)
class VideoInfo:
    """n_frames: the stream's frame count (container header, else counted packets);
    stated: the header's count, None when the container has none; fps None when unknown."""

    n_frames: int
    stated: int | None
    fps: float | None
    width: int
    height: int
    codec: str


class StrictVideoReader:
    """One video file opened for strict decoding; use as a context manager.

    ``info`` comes from the container alone (no decoding); ``frames(indices)`` decodes.
    Raises Quarantine (naming the file) for a file FFmpeg cannot open or that has no video stream.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._container = self._open()
        self._decoded = False  # a decoder is used once: each frames() call after the first reopens the file
        try:
            self.info = self._probe()
        except BaseException:
            self._container.close()
            raise

    def __enter__(self) -> "StrictVideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def _open(self):
        try:
            return av.open(str(self.path), mode="r")
        except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
            raise Quarantine(f"cannot open video {self.path}: not a video or unsupported container ({_kind(e)})") from None

    def _stream(self):
        streams = self._container.streams.video
        if not streams:
            raise Quarantine(f"cannot open video {self.path}: the file has no video stream")
        return streams[0]

    def _probe(self) -> VideoInfo:
        s = self._stream()
        cc = s.codec_context
        if cc is None or not s.width or not s.height:
            raise Quarantine(f"cannot open video {self.path}: the video stream has no usable codec parameters (damaged header?)")
        stated = int(s.frames) if s.frames and s.frames > 0 else None
        n = stated if stated is not None else self._count_packets()
        rate = s.average_rate or s.base_rate
        fps = float(rate) if rate and math.isfinite(float(rate)) and float(rate) > 0 else None
        return VideoInfo(n, stated, fps, int(s.width), int(s.height), cc.name)

    def _count_packets(self) -> int:
        """Packets of the video stream, read without decoding (containers with no stated count)."""
        s = self._stream()
        n = 0
        try:
            for packet in self._container.demux(s):
                n += packet.size > 0
        except av.FFmpegError as e:
            raise Quarantine(f"cannot read video {self.path}: the container is damaged after packet {n} ({_kind(e)})") from None
        finally:
            self._container.seek(0)
        return n

    def frames(self, indices: Sequence[int], size: tuple[int, int] | None = None) -> np.ndarray:
        """Frames ``indices`` (each in [0, n_frames), repeats allowed) as uint8 [K, H, W, 3] RGB,
        rows in the order of ``indices``, frame k being the k-th in presentation order.

        ``size`` = (width, height): FFmpeg's scaler converts each wanted frame straight from the
        decoder's YUV to RGB at that size (``SCALE_INTERPOLATION``), so no full-size RGB frame is
        made; [K, height, width, 3]. Its filter is not the consumer's, so the pixels differ from a
        full-size frame resized afterwards (``bench/feed_rate.py`` measures by how much).

        Decodes the whole stream once (see the module docstring) and raises Quarantine for any
        decoder error, corrupt packet or frame, size change, or a decoded count other than
        ``info.n_frames``.
        """
        want = [int(i) for i in indices]
        n = self.info.n_frames
        if any(not 0 <= i < n for i in want):
            raise ValueError(f"frame indices must lie in [0, {n}) for {self.path}")
        if size is not None and (not isinstance(size, (tuple, list)) or len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in size)):
            raise ValueError(f"size must be (width, height), two positive integers, got {size!r}")
        w, h = (int(size[0]), int(size[1])) if size is not None else (self.info.width, self.info.height)
        keep = {i: None for i in want}
        decoded = self._decode_all(keep, None if size is None else (w, h))
        if decoded != n:
            raise Quarantine(f"video {self.path}: container states {n} frames, decoder finds {decoded} (damaged or truncated?)")
        out = np.empty((len(want), h, w, 3), np.uint8)
        for j, i in enumerate(want):
            out[j] = keep[i]
        return out

    def _fresh_decoder(self):
        """(stream, codec context) opened strictly, on a fresh demuxer after the first use."""
        if self._decoded:  # a fresh demuxer and decoder: no state carried over from the last pass
            self._container.close()
            self._container = self._open()
        self._decoded = True
        s = self._stream()
        cc = s.codec_context
        cc.thread_type = "NONE"
        cc.thread_count = 1
        cc.options = dict(STRICT_DECODER_OPTIONS)
        try:
            cc.open(strict=False)
        except av.FFmpegError as e:
            raise Quarantine(f"corrupt video {self.path}: the decoder cannot start; the codec description in the header is damaged ({_kind(e)})") from None
        return s, cc

    def _decode_all(self, keep: dict[int, np.ndarray | None], size: tuple[int, int] | None = None) -> int:
        """Decode every frame in order, filling ``keep[k]`` for the wanted k; returns the count."""
        s, cc = self._fresh_decoder()
        self._container.seek(0)
        k, where = 0, "the first packet"
        try:
            for packet in self._container.demux(s):
                if not packet.size:
                    continue  # demux() ends with an empty packet; the decoder is flushed below
                if packet.is_corrupt:
                    raise Quarantine(f"corrupt video {self.path}: the container flags the packet at byte {packet.pos} as damaged")
                where = f"the packet at byte {packet.pos} (frame ~{k})"
                for frame in cc.decode(packet):
                    k = self._take(frame, k, keep, size)
            for frame in cc.decode(None):
                k = self._take(frame, k, keep, size)
        except av.FFmpegError as e:
            raise Quarantine(f"corrupt video {self.path}: the decoder reports damaged data in {where} ({_kind(e)})") from None
        return k

    def segment(self, start: float, end: float, margin: float) -> tuple[np.ndarray, np.ndarray]:
        """The frames presented in [start - margin, end - margin) seconds of a file holding several
        episodes one after the other (LeRobot v3.0 ``from_timestamp``/``to_timestamp``).

        Returns (times float64 [K] seconds, pixels uint8 [K, H, W, 3] RGB) in presentation order.
        Seeks to the keyframe at or before ``start`` and decodes forward once, only this segment
        (a whole-file pass per episode would cost O(file) each); the segment is decoded as strictly
        as ``frames`` decodes a file. Raises Quarantine for a decoder error, a corrupt packet or
        frame, a size change, or a frame without a timestamp.
        """
        s, cc = self._fresh_decoder()
        tb = s.time_base
        lo, hi = start - margin, end - margin
        try:
            self._container.seek(max(0, math.floor(lo / tb)), stream=s, backward=True, any_frame=False)
        except av.FFmpegError as e:
            raise Quarantine(f"video {self.path}: cannot seek to {start:.4f} s ({_kind(e)})") from None
        times: list[float] = []
        pixels: list[np.ndarray] = []

        def take(frame) -> bool:  # False once past the segment
            if frame.pts is None:
                raise Quarantine(f"video {self.path}: a frame near {start:.4f} s has no timestamp")
            t = float(frame.pts * tb)
            if t >= hi:
                return False
            if t >= lo:
                self._check(frame, len(times))
                times.append(t)
                pixels.append(frame.to_ndarray(format="rgb24"))
            return True

        try:
            going = True
            for packet in self._container.demux(s):
                if not packet.size:
                    continue
                if packet.is_corrupt:
                    raise Quarantine(f"corrupt video {self.path}: the container flags the packet at byte {packet.pos} as damaged")
                going = all([take(f) for f in cc.decode(packet)])
                if not going:
                    break
            if going:
                for f in cc.decode(None):
                    if not take(f):
                        break
        except av.FFmpegError as e:
            raise Quarantine(f"corrupt video {self.path}: the decoder reports damaged data near {start:.4f} s ({_kind(e)})") from None
        h, w = self.info.height, self.info.width
        return np.asarray(times, np.float64), (np.stack(pixels) if pixels else np.empty((0, h, w, 3), np.uint8))

    def _take(self, frame, k: int, keep: dict[int, np.ndarray | None], size: tuple[int, int] | None = None) -> int:
        self._check(frame, k)
        if k in keep and size is None:
            keep[k] = frame.to_ndarray(format="rgb24")  # [H, W, 3]
        elif k in keep:
            keep[k] = frame.to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation=SCALE_INTERPOLATION)
        return k + 1

    def _check(self, frame, k: int) -> None:
        if frame.is_corrupt:
            raise Quarantine(f"corrupt video {self.path}: the decoder marks frame {k} as damaged")
        if (frame.width, frame.height) != (self.info.width, self.info.height):
            raise Quarantine(f"corrupt video {self.path}: frame {k} is {frame.width}x{frame.height}, "
                             f"the stream is {self.info.width}x{self.info.height}")


def _kind(e: BaseException) -> str:
    """A short, stable name for an FFmpeg error: its class ("InvalidDataError"), not its text."""
    return type(e).__name__
