"""Damaged mp4s never build silently from wrong bytes (issue 18 part 1).

The fuzz set (tests/pipeline/mp4_damage.py) is written from three demo tours into tmp_path; each
file is read three times through ``read_video`` (the path every video source uses). A file must be
quarantined, or decode to exactly the original frames; the one exception is codec-level damage
that the decoder itself cannot see, checked by decoding it again with FFmpeg's most sensitive
error detection, and counted.
"""
from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from navcache.pipeline.decode import read_video
from navcache.pipeline.demo.video_writer import write_tour
from navcache.pipeline.errors import Quarantine
from navcache.pipeline.video_check import check_mp4
from navcache.pipeline.video_reader import StrictVideoReader
from tests.pipeline.mp4_damage import CODEC_KINDS, CONTAINER_KINDS, COUNTS, boxes, damaged_set, find

RUNS = 3


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("tours")
    return [root / "videos" / write_tour(root, 0, "train", i)["media"] for i in range(3)]


@pytest.fixture(scope="module")
def originals(clips) -> dict[Path, np.ndarray]:
    return {c: read_video(c, None)[0] for c in clips}


def outcome(path: Path) -> tuple[str, object]:
    """("quarantined", reason) or ("built", (n, pixels bytes))."""
    try:
        pixels, n = read_video(path, None)
    except Quarantine as e:
        return "quarantined", e.reason
    return "built", (n, pixels.tobytes())


def codec_reports_nothing(path: Path) -> bool:
    """Decode with every FFmpeg error check on (stricter than the reader's): no error, no corrupt frame."""
    try:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            cc = s.codec_context
            cc.thread_type, cc.thread_count = "NONE", 1
            cc.options = {"err_detect": "crccheck+bitstream+buffer+explode+careful+compliant+aggressive"}
            return not any(f.is_corrupt for f in c.decode(s))
    except av.FFmpegError:
        return False


def run_fuzz(clips, originals, out: Path, every: int) -> Counter:
    tally: Counter = Counter()
    for kind, path, clip in damaged_set(clips, out, seed=0, every=every):
        runs = [outcome(path) for _ in range(RUNS)]
        assert all(r == runs[0] for r in runs), f"{path.name}: results differ between identical runs"
        state, value = runs[0]
        if state == "quarantined":
            assert path.name in value and "avcodec" not in value and "\n" not in value, value
            tally[kind, "quarantined"] += 1
        elif value == (len(originals[clip]), originals[clip].tobytes()):
            tally[kind, "identical"] += 1
        else:
            assert kind in CODEC_KINDS, f"{path.name}: container damage built from wrong frames"
            assert codec_reports_nothing(path), f"{path.name}: the codec sees damage the reader let through"
            tally[kind, "silent"] += 1
    print(sorted(tally.items()))  # the per-kind counts, visible with -s
    return tally


def test_fuzz_subset_never_builds_container_damage(clips, originals, tmp_path):
    tally = run_fuzz(clips, originals, tmp_path, every=5)
    assert sum(tally.values()) == len(range(0, sum(COUNTS.values()), 5))
    assert {k for k, _ in tally} >= set(CONTAINER_KINDS)  # every container kind is in the subset
    assert sum(v for (k, s), v in tally.items() if s == "quarantined") > sum(tally.values()) // 2


@pytest.mark.slow
def test_fuzz_full_set(clips, originals, tmp_path):
    tally = run_fuzz(clips, originals, tmp_path, every=1)
    assert sum(tally.values()) == sum(COUNTS.values()) >= 150
    silent = sum(v for (k, s), v in tally.items() if s == "silent")
    assert silent <= sum(COUNTS[k] for k in CODEC_KINDS) // 10, tally  # codec-invisible damage is rare


# ------------------------------------------------------------------------- container checks


def _reason(data: bytes, tmp_path: Path, name: str = "bad.mp4") -> str:
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(Quarantine) as err:
        read_video(p, [0])
    assert name in err.value.reason
    return err.value.reason


def _set_u32(data: bytes, pos: int, value: int) -> bytes:
    return data[:pos] + struct.pack(">I", value) + data[pos + 4 :]


def test_intact_tour_passes_the_container_check(clips):
    t = check_mp4(clips[0], clips[0].stat().st_size)
    assert t is not None and t.video_samples == StrictVideoReader(clips[0]).info.n_frames and not t.fragmented


def test_chunk_offset_before_mdat(clips, tmp_path):
    data = clips[0].read_bytes()
    stco = find(data, b"stco")[0]
    reason = _reason(_set_u32(data, stco + 16, 8), tmp_path)
    assert "outside the media data" in reason and "stco" in reason


def test_chunk_offset_past_the_end(clips, tmp_path):
    data = clips[0].read_bytes()
    reason = _reason(_set_u32(data, find(data, b"stco")[0] + 16, len(data) - 100), tmp_path)
    assert "outside the media data" in reason or "sample table lists" in reason


def test_junk_box_before_mdat(clips, tmp_path):
    data = clips[0].read_bytes()
    o, _ = find(data, b"mdat")
    reason = _reason(data[:o] + struct.pack(">I4s", 64, b"junk") + bytes(56) + data[o:], tmp_path)
    assert "outside the media data" in reason


def test_moov_moved_to_front_without_fixing_offsets(clips, tmp_path):
    data = clips[0].read_bytes()
    top = boxes(data)
    moov = [data[o : o + s] for t, o, s in top if t == b"moov"]
    rest = [data[o : o + s] for t, o, s in top if t != b"moov"]
    reason = _reason(b"".join(rest[:1] + moov + rest[1:]), tmp_path)
    assert "outside the media data" in reason


def test_sizes_beyond_mdat(clips, tmp_path):
    data = clips[0].read_bytes()
    stsz = find(data, b"stsz")[0]
    reason = _reason(_set_u32(data, stsz + 20, 10_000_000), tmp_path)  # first sample 10 MB
    assert "sample table lists" in reason and "'mdat' holds" in reason


def test_overlapping_samples(clips, tmp_path):
    data = clips[0].read_bytes()
    stsz = find(data, b"stsz")[0]
    (first,) = struct.unpack(">I", data[stsz + 20 : stsz + 24])
    (second,) = struct.unpack(">I", data[stsz + 24 : stsz + 28])
    # shrink sample 1 and grow sample 2 by the same amount: the sum stays, offsets shift
    damaged = _set_u32(_set_u32(data, stsz + 20, first - 10), stsz + 24, second + 10)
    p = tmp_path / "shifted.mp4"
    p.write_bytes(damaged)
    try:
        read_video(p, None)
    except Quarantine as e:
        assert "shifted.mp4" in e.reason
    else:
        pytest.fail("samples re-cut inside the chunk decoded without an error")


@pytest.mark.parametrize("first_key, expected", [(2, "first keyframe is sample 2"), (100000, "not increasing")])
def test_keyframe_table_inconsistent(clips, tmp_path, first_key, expected):
    data = clips[0].read_bytes()
    stss = find(data, b"stss")[0]
    assert expected in _reason(_set_u32(data, stss + 16, first_key), tmp_path)


def test_stsc_not_covering_the_samples(clips, tmp_path):
    data = clips[0].read_bytes()
    stsc = find(data, b"stsc")[0]
    reason = _reason(_set_u32(data, stsc + 20, 5), tmp_path)  # samples per chunk of the only run
    assert "chunk table" in reason


def test_quicktime_zero_terminator_inside_moov_is_accepted(clips, tmp_path, originals):
    data = clips[0].read_bytes()
    o, size = find(data, b"moov")  # the last box of the file
    fixed = data[:o] + struct.pack(">I", size + 4) + data[o + 4 : o + size] + bytes(4)
    (tmp_path / "qt.mp4").write_bytes(fixed)
    pixels, n = read_video(tmp_path / "qt.mp4", None)
    assert np.array_equal(pixels, originals[clips[0]])


def test_non_mp4_containers_skip_the_table_check(tmp_path):
    assert check_mp4(_write_h264(tmp_path / "x.mkv", 5), (tmp_path / "x.mkv").stat().st_size) is None


# ---------------------------------------------------------------------------------- reader


def _write_h264(path: Path, n: int, w: int = 64, h: int = 48) -> Path:
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"g": "5", "bf": "2"}  # B-frames: decode order differs from presentation order
        for k in range(n):
            img = np.stack([(xx * 3 + 9 * k) % 256, (yy * 4) % 256, np.full_like(xx, 20 * k % 256)], -1).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_reader_frames_by_index_h264_with_b_frames(tmp_path):
    path = _write_h264(tmp_path / "b.mp4", 24)
    with StrictVideoReader(path) as r:
        assert (r.info.n_frames, r.info.width, r.info.height, r.info.codec) == (24, 64, 48, "h264")
        assert r.info.fps == 10.0
        every = r.frames(range(24))
        picked = r.frames([23, 0, 7, 7])  # a second decode on the same reader
    assert every.shape == (24, 48, 64, 3) and every.dtype == np.uint8
    assert np.array_equal(picked, every[[23, 0, 7, 7]])
    # the blue channel encodes the frame number: presentation order, not decode order
    assert np.all(np.abs(every[:, :, :, 2].mean(axis=(1, 2)) - (20 * np.arange(24) % 256)) < 6)
    with pytest.raises(ValueError):
        StrictVideoReader(path).frames([24])


def test_reader_quarantines_damaged_h264_and_is_deterministic(tmp_path):
    data = _write_h264(tmp_path / "b.mp4", 24).read_bytes()
    o, s = find(data, b"mdat")
    damaged = bytearray(data)
    mid = o + s // 2
    damaged[mid : mid + 64] = bytes(64)
    (tmp_path / "z.mp4").write_bytes(bytes(damaged))
    reasons = {outcome(tmp_path / "z.mp4")[1] for _ in range(RUNS)}
    assert len(reasons) == 1
    (reason,) = reasons
    assert "z.mp4" in reason and "damaged" in reason and "avcodec" not in reason


def test_reader_refuses_what_is_not_a_video(tmp_path):
    (tmp_path / "t.mp4").write_text("not a video\n" * 50)
    with pytest.raises(Quarantine, match="cannot open video"):
        StrictVideoReader(tmp_path / "t.mp4")
