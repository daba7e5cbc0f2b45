"""Container checks for mp4/mov (ISO-BMFF) files, before any decoding: the boxes tile the file and
the sample table points at the media data.

Why a box walker of our own: FFmpeg's mov demuxer (and so decord, OpenCV and PyAV) reads each
sample at whatever byte offset ``stco``/``co64`` gives, inside ``mdat`` or not, and hands the bytes
to the decoder, which conceals what it cannot parse. A ``moov`` moved to the front without fixing
its chunk offsets, a junk box inserted before ``mdat`` or a shifted ``stco`` thus decodes "fine"
from the wrong bytes. Neither PyAV nor OpenCV exposes box extents, and the mp4 parsers on PyPI
(pymp4: a construct-based box grammar pinned to an old construct) would add a dependency for
what is five fixed-layout tables. Only box headers and the tables in ``moov`` are read (kB), never
the media data.

Checks, each a ``Quarantine`` naming the file and the box:
  * top-level boxes tile the file exactly (a cut file ends inside a box) and ``moov`` exists;
  * per track: table entry counts fit their boxes; ``stsc`` runs start at chunk 1, increase and
    cover the ``stsz`` sample count exactly; ``stts`` counts the same samples;
  * every sample ``[offset, offset + size)`` lies inside one ``mdat`` payload, no two samples
    share bytes, and the sizes of all tracks sum to no more than the ``mdat`` payloads;
  * ``stss`` (keyframes) is strictly increasing, within ``[1, samples]``, and a video track's
    first sample is a keyframe (nothing before it can be decoded).
Fragmented files (``moof`` boxes, empty ``stbl``) carry their tables elsewhere; only the tiling
is checked for them.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from navcache.pipeline.errors import Quarantine

__all__ = ["Mp4Tables", "check_iso_bmff_complete", "check_mp4"]

# Top-level box types that can start an ISO-BMFF file; anything else (mkv, avi, garbage) is not ours.
_FIRST_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"styp"})
_CONTAINERS = frozenset({b"moov", b"trak", b"mdia", b"minf", b"stbl"})
_TABLES = frozenset({b"stsz", b"stz2", b"stco", b"co64", b"stsc", b"stss", b"stts", b"hdlr"})
_MAX_MOOV = 256 << 20  # a moov this big is damage (or a day-long file); refuse instead of reading it
_MAX_SAMPLES = 1 << 27  # a constant-size 'stsz' states its count in 4 bytes; ~13 days at 120 fps


@dataclass(frozen=True)
class _Box:
    type: bytes
    start: int  # offset of the header
    payload: int  # offset of the first byte after the header
    end: int  # one past the last byte

    @property
    def name(self) -> str:
        return self.type.decode("latin-1")


@dataclass(frozen=True)
class Mp4Tables:
    """What the checks found. video_samples: the first video track's sample count (None if the
    file has no video track or is fragmented); mdat_bytes: payload bytes of all ``mdat`` boxes."""

    video_samples: int | None
    mdat_bytes: int
    fragmented: bool


def _walk(f: BinaryIO, start: int, end: int, path: Path, top: bool) -> list[_Box]:
    """The boxes that tile ``[start, end)``; Quarantine when a header is cut or a size is wrong."""
    out, offset = [], start
    while offset < end:
        f.seek(offset)
        header = f.read(16)
        if not top and end - offset < 8 and not header[: end - offset].strip(b"\x00"):
            break  # QuickTime's optional zero terminator at the end of a container
        if len(header) < 8 or offset + 8 > end:
            what = "after the last mp4 box" if top else "inside a box"
            raise Quarantine(f"truncated video {path}: {end - offset} stray bytes {what} at offset {offset}")
        size, typ = struct.unpack(">I4s", header[:8])
        name, head = typ.decode("latin-1"), 8
        if size == 1:  # 64-bit "largesize" follows the type
            if len(header) < 16:
                raise Quarantine(f"truncated video {path}: mp4 box {name!r} header cut at offset {offset}")
            size, head = struct.unpack(">Q", header[8:16])[0], 16
        elif size == 0:  # "extends to the end of the enclosing space"
            size = end - offset
        if size < head:
            raise Quarantine(f"corrupt video {path}: mp4 box {name!r} at offset {offset} has size {size}")
        if offset + size > end:
            where = f"(file is {end} bytes)" if top else f"(its parent box ends at {end})"
            raise Quarantine(f"truncated video {path}: mp4 box {name!r} at offset {offset} declares {size} bytes "
                             f"but only {end - offset} remain {where}")
        out.append(_Box(typ, offset, offset + head, offset + size))
        offset += size
    return out


def check_iso_bmff_complete(path: Path, size: int) -> bool:
    """Quarantine an mp4/mov whose top-level boxes do not exactly tile the file, or lack ``moov``.
    Returns whether the file is ISO-BMFF (False: another container, nothing checked).

    A truncated file ends inside a box (usually ``mdat``), so that box declares more bytes than remain.
    """
    return _top_level(Path(path), size) is not None


def _top_level(path: Path, size: int) -> list[_Box] | None:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8 or head[4:8] not in _FIRST_BOXES:
            return None
        boxes = _walk(f, 0, size, path, top=True)
    if not any(b.type == b"moov" for b in boxes):
        raise Quarantine(f"unfinished video {path}: mp4 has no 'moov' box (index missing, e.g. recording interrupted)")
    return boxes


def check_mp4(path: Path, size: int) -> Mp4Tables | None:
    """All the checks of the module docstring; None when the file is not ISO-BMFF."""
    path = Path(path)
    top = _top_level(path, size)
    if top is None:
        return None
    moovs = [b for b in top if b.type == b"moov"]
    if len(moovs) > 1:
        raise Quarantine(f"corrupt video {path}: {len(moovs)} 'moov' boxes (one index expected)")
    moov = moovs[0]
    if moov.end - moov.start > _MAX_MOOV:
        raise Quarantine(f"corrupt video {path}: 'moov' box of {moov.end - moov.start} bytes (limit {_MAX_MOOV})")
    mdats = np.array([(b.payload, b.end) for b in top if b.type == b"mdat"], dtype=np.int64).reshape(-1, 2)
    mdat_bytes = int((mdats[:, 1] - mdats[:, 0]).sum())
    with open(path, "rb") as f:
        tracks = [_read_track(f, trak, path) for trak in _walk(f, moov.payload, moov.end, path, top=False)
                  if trak.type == b"trak"]
    fragmented = any(b.type == b"moof" for b in top)
    video_samples, total = None, 0
    spans: list[np.ndarray] = []
    for k, t in enumerate(tracks):
        if fragmented and t["sizes"].size == 0:
            continue
        offsets = _sample_offsets(t, path, k)
        _check_keyframes(t, path, k)
        spans.append(np.stack([offsets, offsets + t["sizes"]], axis=1))
        total += int(t["sizes"].sum())
        if t["handler"] == b"vide" and video_samples is None:
            video_samples = int(t["sizes"].size)
    if total > mdat_bytes:
        raise Quarantine(f"corrupt video {path}: the sample table lists {total} bytes of samples, 'mdat' holds {mdat_bytes}")
    if spans:
        _check_inside_mdat(np.concatenate(spans), mdats, path)
    return Mp4Tables(video_samples, mdat_bytes, fragmented)


# ------------------------------------------------------------------------------------ tables


def _read_track(f: BinaryIO, trak: _Box, path: Path) -> dict:
    """{box type: payload bytes} of the tables under ``trak`` (first of each), parsed below."""
    raw: dict[bytes, bytes] = {}

    def visit(box: _Box) -> None:
        for b in _walk(f, box.payload, box.end, path, top=False):
            if b.type in _CONTAINERS:
                visit(b)
            elif b.type in _TABLES and b.type not in raw:
                f.seek(b.payload)
                raw[b.type] = f.read(b.end - b.payload)

    visit(trak)
    return _parse_track(raw, path)


def _entries(raw: dict[bytes, bytes], typ: bytes, width: int, fields: int, path: Path) -> np.ndarray | None:
    """Entries of a full box whose payload is version/flags, a u32 count, then ``count`` rows of
    ``fields`` big-endian unsigned ints of ``width`` bytes: uint64 [count, fields]; None if absent."""
    data = raw.get(typ)
    if data is None:
        return None
    name = typ.decode("latin-1")
    if len(data) < 8:
        raise Quarantine(f"corrupt video {path}: '{name}' box of {len(data)} bytes has no entry count")
    (count,) = struct.unpack(">I", data[4:8])
    need = count * width * fields
    if 8 + need > len(data):
        raise Quarantine(f"corrupt video {path}: '{name}' declares {count} entries but its box holds {(len(data) - 8) // (width * fields)}")
    rows = np.frombuffer(data, dtype=f">u{width}", count=count * fields, offset=8)
    return rows.astype(np.uint64).reshape(count, fields)


def _sizes(raw: dict[bytes, bytes], path: Path) -> np.ndarray:
    """Sample sizes from ``stsz`` or ``stz2``: int64 [samples]."""
    if b"stsz" in raw:
        data = raw[b"stsz"]
        if len(data) < 12:
            raise Quarantine(f"corrupt video {path}: 'stsz' box of {len(data)} bytes is too short")
        constant, count = struct.unpack(">II", data[4:12])
        if constant:
            if count > _MAX_SAMPLES:  # bounds the allocation; the mdat check sees the bytes
                raise Quarantine(f"corrupt video {path}: 'stsz' declares {count} samples of {constant} bytes")
            return np.full(count, constant, dtype=np.int64)
        if 12 + 4 * count > len(data):
            raise Quarantine(f"corrupt video {path}: 'stsz' declares {count} samples but its box holds {(len(data) - 12) // 4}")
        return np.frombuffer(data, ">u4", count=count, offset=12).astype(np.int64)
    if b"stz2" in raw:
        data = raw[b"stz2"]
        if len(data) < 12 or data[7] not in (4, 8, 16):
            raise Quarantine(f"corrupt video {path}: 'stz2' box is too short or has a bad field size")
        bits, (count,) = data[7], struct.unpack(">I", data[8:12])
        if 12 + (count * bits + 7) // 8 > len(data):
            raise Quarantine(f"corrupt video {path}: 'stz2' declares {count} samples but its box is {len(data)} bytes")
        if bits == 4:
            nib = np.frombuffer(data, np.uint8, count=(count + 1) // 2, offset=12)
            return np.stack([nib >> 4, nib & 15], axis=1).reshape(-1)[:count].astype(np.int64)
        return np.frombuffer(data, f">u{bits // 8}", count=count, offset=12).astype(np.int64)
    raise Quarantine(f"corrupt video {path}: a track has no sample size table ('stsz')")


def _parse_track(raw: dict[bytes, bytes], path: Path) -> dict:
    hdlr = raw.get(b"hdlr", b"")
    chunks = _entries(raw, b"stco", 4, 1, path)
    if chunks is None:
        chunks = _entries(raw, b"co64", 8, 1, path)
    return {
        "handler": hdlr[8:12] if len(hdlr) >= 12 else b"",
        "sizes": _sizes(raw, path),
        "chunks": np.zeros((0, 1), np.uint64) if chunks is None else chunks,
        "stsc": _entries(raw, b"stsc", 4, 3, path),
        "stss": _entries(raw, b"stss", 4, 1, path),
        "stts": _entries(raw, b"stts", 4, 2, path),
    }


def _sample_offsets(t: dict, path: Path, k: int) -> np.ndarray:
    """File offset of every sample: int64 [samples], from stco/co64 + stsc + stsz."""
    sizes, chunk_off = t["sizes"], t["chunks"][:, 0].astype(np.int64)
    n, n_chunks, where = sizes.size, chunk_off.size, f"{path}: track {k + 1}"
    stts = t["stts"]
    if stts is not None and int(stts[:, 0].sum()) != n:
        raise Quarantine(f"corrupt video {where}: 'stts' times {int(stts[:, 0].sum())} samples, 'stsz' lists {n}")
    if n == 0:
        return np.zeros(0, np.int64)
    stsc = t["stsc"]
    if stsc is None or stsc.shape[0] == 0 or n_chunks == 0:
        raise Quarantine(f"corrupt video {where}: {n} samples but no chunk table ('stsc'/'stco')")
    first = stsc[:, 0].astype(np.int64)
    per = stsc[:, 1].astype(np.int64)
    if first[0] != 1 or np.any(np.diff(first) <= 0) or first[-1] > n_chunks or np.any(per == 0):
        raise Quarantine(f"corrupt video {where}: 'stsc' runs must start at chunk 1, increase, stay within "
                         f"{n_chunks} chunks and hold samples")
    run_len = np.diff(np.append(first, n_chunks + 1))
    per_chunk = np.repeat(per, run_len)  # [chunks]
    if int(per_chunk.sum()) != n:
        raise Quarantine(f"corrupt video {where}: the chunk table ('stsc' x 'stco') holds {int(per_chunk.sum())} "
                         f"samples, 'stsz' lists {n}")
    chunk_of = np.repeat(np.arange(n_chunks), per_chunk)  # [samples]
    before = np.cumsum(sizes) - sizes  # bytes of all earlier samples
    chunk_start = (np.cumsum(per_chunk) - per_chunk)[chunk_of]  # first sample of each sample's chunk
    return chunk_off[chunk_of] + before - before[chunk_start]


def _check_keyframes(t: dict, path: Path, k: int) -> None:
    stss, n = t["stss"], t["sizes"].size
    if stss is None or n == 0:
        return  # no table: every sample is a keyframe
    s = stss[:, 0].astype(np.int64)
    where = f"{path}: track {k + 1}"
    if s.size == 0 and t["handler"] == b"vide":
        raise Quarantine(f"corrupt video {where}: the keyframe table ('stss') is empty")
    if s.size and (s[0] < 1 or s[-1] > n or np.any(np.diff(s) <= 0)):
        raise Quarantine(f"corrupt video {where}: the keyframe table ('stss') is not increasing within samples 1..{n}")
    if s.size and t["handler"] == b"vide" and s[0] != 1:
        raise Quarantine(f"corrupt video {where}: the first keyframe is sample {s[0]}; frames before it cannot be decoded")


def _check_inside_mdat(spans: np.ndarray, mdats: np.ndarray, path: Path) -> None:
    """spans int64 [S, 2] (start, end) of every sample; mdats int64 [M, 2] payload ranges."""
    if mdats.shape[0] == 0:
        raise Quarantine(f"corrupt video {path}: the sample table lists {spans.shape[0]} samples but there is no 'mdat' box")
    order = np.argsort(mdats[:, 0])
    lo, hi = mdats[order, 0], mdats[order, 1]
    box = np.searchsorted(lo, spans[:, 0], side="right") - 1  # the mdat each sample would start in
    inside = (box >= 0) & (spans[:, 0] >= lo[np.maximum(box, 0)]) & (spans[:, 1] <= hi[np.maximum(box, 0)])
    if not inside.all():
        i = int(np.argmin(inside))
        raise Quarantine(f"corrupt video {path}: sample {i + 1} (bytes {spans[i, 0]}..{spans[i, 1]}) lies outside the "
                         f"media data ('mdat' at {lo[0]}..{hi[-1]}): chunk offsets ('stco'/'co64') do not match the file")
    s = spans[np.argsort(spans[:, 0], kind="stable")]
    overlap = s[1:, 0] < s[:-1, 1]
    if overlap.any():
        i = int(np.argmax(overlap))
        raise Quarantine(f"corrupt video {path}: two samples share bytes {s[i + 1, 0]}..{s[i, 1]}: "
                         f"chunk offsets ('stco'/'co64') do not match the file")
