"""Damaged copies of an mp4, by kind, for the strict-decoding tests and ``bench/video_fuzz.py``.

Every function takes the bytes of an intact moov-at-end mp4 (as cv2.VideoWriter writes it) and a
``numpy.random.Generator`` and returns damaged bytes. Kinds:

  container-level (the sample table or the box layout no longer matches the media data; a reader
  must refuse every one of these or decode exactly the original frames):
    stco_shift, junk_before_mdat, moov_moved, box_swap, table_edit
  codec-level (the media data itself is damaged; only the decoder can notice):
    mdat_flip, mdat_zero, codec_header
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

CONTAINER_KINDS = ("stco_shift", "junk_before_mdat", "moov_moved", "box_swap", "table_edit")
CODEC_KINDS = ("mdat_flip", "mdat_zero", "codec_header")
_NESTED = (b"moov", b"trak", b"mdia", b"minf", b"stbl")


def boxes(data: bytes | bytearray, start: int = 0, end: int | None = None) -> list[tuple[bytes, int, int]]:
    """Boxes tiling ``data[start:end]`` as (type, offset, size); 32-bit sizes only (as cv2 writes)."""
    end = len(data) if end is None else end
    out, i = [], start
    while i + 8 <= end:
        size, typ = struct.unpack(">I4s", data[i : i + 8])
        if size < 8:
            break
        out.append((typ, i, size))
        i += size
    return out


def find(data: bytes | bytearray, typ: bytes, start: int = 0, end: int | None = None) -> tuple[int, int]:
    """(offset, size) of the first box ``typ``, searching into moov/trak/mdia/minf/stbl."""
    for t, o, s in boxes(data, start, end):
        if t == typ:
            return o, s
        if t in _NESTED:
            try:
                return find(data, typ, o + 8, o + s)
            except KeyError:
                pass
    raise KeyError(typ)


def _mdat_payload(data: bytes) -> tuple[int, int]:
    o, s = find(data, b"mdat")
    return o + 8, o + s


def mdat_flip(data: bytes, rng: np.random.Generator) -> bytes:
    """1-8 random bytes of the media data XOR-ed with a random non-zero value."""
    out = bytearray(data)
    lo, hi = _mdat_payload(data)
    for p in rng.integers(lo, hi, int(rng.integers(1, 9))):
        out[p] ^= int(rng.integers(1, 256))
    return bytes(out)


def mdat_zero(data: bytes, rng: np.random.Generator) -> bytes:
    """A run of 16-4096 bytes of the media data set to zero."""
    out = bytearray(data)
    lo, hi = _mdat_payload(data)
    n = int(rng.integers(16, 4097))
    p = int(rng.integers(lo, hi - n))
    out[p : p + n] = bytes(n)
    return bytes(out)


def codec_header(data: bytes, rng: np.random.Generator) -> bytes:
    """1-3 bytes flipped in the sample description ('stsd': codec id, size, decoder config)."""
    out = bytearray(data)
    o, s = find(data, b"stsd")
    for p in rng.integers(o + 16, o + s, int(rng.integers(1, 4))):
        out[p] ^= int(rng.integers(1, 256))
    return bytes(out)


def _entry_pos(data: bytes, typ: bytes, width: int, rng: np.random.Generator, skip: int = 16) -> int:
    o, s = find(data, typ)
    count = (s - skip) // width
    return o + skip + width * int(rng.integers(0, max(count, 1)))


def stco_shift(data: bytes, rng: np.random.Generator) -> bytes:
    """One chunk offset moved by +-1..20000 bytes (or to a random offset of the file)."""
    out = bytearray(data)
    p = _entry_pos(data, b"stco", 4, rng)
    (v,) = struct.unpack(">I", data[p : p + 4])
    if rng.random() < 0.2:
        new = int(rng.integers(0, len(data)))
    else:
        new = max(0, v + int(rng.choice([-1, 1])) * int(rng.integers(1, 20001)))
    out[p : p + 4] = struct.pack(">I", new if new != v else v + 1)
    return bytes(out)


def junk_before_mdat(data: bytes, rng: np.random.Generator) -> bytes:
    """A well-formed box of 8-4096 bytes inserted before 'mdat', chunk offsets left as they were."""
    o, _ = find(data, b"mdat")
    n = int(rng.integers(8, 4097))
    typ = [b"free", b"junk", b"skip", b"uuid"][int(rng.integers(0, 4))]
    box = struct.pack(">I4s", n, typ) + rng.integers(0, 256, n - 8, dtype=np.uint8).tobytes()
    return data[:o] + box + data[o:]


def moov_moved(data: bytes, rng: np.random.Generator) -> bytes:
    """'moov' moved to another top-level position (front, before or after 'free') without fixing
    its chunk offsets."""
    top = boxes(data)
    moov = next((o, s) for t, o, s in top if t == b"moov")
    rest = [(t, o, s) for t, o, s in top if t != b"moov"]
    at = int(rng.integers(0, len(rest)))  # before rest[at]; never the end (where it was)
    parts = [data[o : o + s] for _, o, s in rest]
    parts.insert(at, data[moov[0] : moov[0] + moov[1]])
    return b"".join(parts)


def box_swap(data: bytes, rng: np.random.Generator) -> bytes:
    """Two neighbouring boxes swapped, at the top level or inside 'stbl' (a harmless reorder there)."""
    if rng.random() < 0.5:
        o, s = find(data, b"stbl")
        seq = boxes(data, o + 8, o + s)
    else:
        seq = boxes(data)
    i = int(rng.integers(0, len(seq) - 1))
    (_, oa, sa), (_, ob, sb) = seq[i], seq[i + 1]
    return data[:oa] + data[ob : ob + sb] + data[oa : oa + sa] + data[ob + sb :]


def table_edit(data: bytes, rng: np.random.Generator) -> bytes:
    """One entry of stsz / stsc / stss / stts / the stco count set to another value."""
    out = bytearray(data)
    which = int(rng.integers(0, 5))
    if which == 0:  # a sample size
        p = _entry_pos(data, b"stsz", 4, rng, skip=20)
    elif which == 1:  # samples per chunk
        p = _entry_pos(data, b"stsc", 12, rng) + 4
    elif which == 2:  # a keyframe number
        p = _entry_pos(data, b"stss", 4, rng)
    elif which == 3:  # a run's sample count
        p = _entry_pos(data, b"stts", 8, rng)
    else:  # the chunk count
        p = find(data, b"stco")[0] + 12
    (v,) = struct.unpack(">I", data[p : p + 4])
    delta = int(rng.choice([-1, 1])) * int(rng.integers(1, 1 + max(2, v // 2)))
    new = min(max(v + delta, 0), 0xFFFFFFFF)
    out[p : p + 4] = struct.pack(">I", new if new != v else v + 1)
    return bytes(out)


KINDS: dict[str, Callable[[bytes, np.random.Generator], bytes]] = {
    "mdat_flip": mdat_flip, "mdat_zero": mdat_zero, "codec_header": codec_header, "stco_shift": stco_shift,
    "junk_before_mdat": junk_before_mdat, "moov_moved": moov_moved, "box_swap": box_swap, "table_edit": table_edit,
}
#: files per kind in the full set (160 in all)
COUNTS = {"mdat_flip": 35, "mdat_zero": 30, "codec_header": 10, "stco_shift": 15, "junk_before_mdat": 15,
          "moov_moved": 10, "box_swap": 15, "table_edit": 30}


def damaged_set(clips: list[Path], out: Path, seed: int = 0, every: int = 1) -> Iterator[tuple[str, Path, Path]]:
    """Write the damaged copies (``every``-th of the full set) under ``out``; yields
    (kind, damaged file, original clip). Deterministic for a seed and the same clips."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = [c.read_bytes() for c in clips]
    k = 0
    for kind, n in COUNTS.items():
        for i in range(n):
            src = i % len(clips)
            data = KINDS[kind](sources[src], rng)  # drawn for every file, so subsets match the full set
            if k % every == 0:
                path = out / f"{kind}_{i:03d}.mp4"
                path.write_bytes(data)
                yield kind, path, clips[src]
            k += 1
