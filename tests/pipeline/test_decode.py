"""Sampling rules, path safety and count-checked decoding, on fixtures written into tmp_path."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from navcache.pipeline.decode import black_frames, read_jpegs, read_video, read_video_sampled
from navcache.pipeline.errors import NavcacheError, Quarantine
from navcache.pipeline.safepaths import UnsafePath, resolve_under
from navcache.pipeline.sampling import navila_indices, uniform_indices

W, H = 64, 48


def frame_rgb(i: int) -> tuple[int, int, int]:
    """Distinct, codec-friendly solid colour of frame i (R, G, B differ so channel swaps show)."""
    return (200 - 4 * i, 40 + 4 * i, 110)


def write_video(path: Path, n: int, size: tuple[int, int] = (W, H)) -> Path:
    w, h = size
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (w, h))
    assert vw.isOpened()
    for i in range(n):
        vw.write(np.full((h, w, 3), frame_rgb(i)[::-1], np.uint8))  # cv2 wants BGR
    vw.release()
    return path


def write_jpeg(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (W, H)) -> Path:
    w, h = size
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((h, w, 3), rgb[::-1], np.uint8))
    return path


def boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """Top-level mp4 boxes as (type, offset, size)."""
    out, i = [], 0
    while i + 8 <= len(data):
        size, typ = struct.unpack(">I4s", data[i : i + 8])
        out.append((typ, i, size))
        i += size
    return out


def _shift_chunk_offsets(moov: bytearray, start: int, end: int, delta: int) -> None:
    i = start
    while i + 8 <= end:
        size, typ = struct.unpack(">I4s", moov[i : i + 8])
        if typ in (b"moov", b"trak", b"mdia", b"minf", b"stbl"):
            _shift_chunk_offsets(moov, i + 8, i + size, delta)
        elif typ in (b"stco", b"co64"):
            width, fmt = (4, ">I") if typ == b"stco" else (8, ">Q")
            (count,) = struct.unpack(">I", moov[i + 12 : i + 16])
            for k in range(count):
                p = i + 16 + width * k
                (v,) = struct.unpack(fmt, moov[p : p + width])
                moov[p : p + width] = struct.pack(fmt, v + delta)
        i += size


def faststart(data: bytes) -> bytes:
    """Move 'moov' in front of 'mdat' (as streaming encoders do), fixing the chunk offsets.

    With the index first, a truncated file still announces every frame; that is the dangerous case.
    """
    top = boxes(data)
    (moov_off, moov_size), = [(o, s) for t, o, s in top if t == b"moov"]
    moov = bytearray(data[moov_off : moov_off + moov_size])
    _shift_chunk_offsets(moov, 8, len(moov), len(moov))
    out = b""
    for t, o, s in top:
        if t == b"mdat":
            out += bytes(moov)
        if t != b"moov":
            out += data[o : o + s]
    return out


def mdat_size_zero(data: bytes) -> bytes:
    """Mark 'mdat' as "extends to end of file", which hides truncation from the box walk."""
    (off,) = [o for t, o, s in boxes(data) if t == b"mdat"]
    return data[:off] + b"\x00\x00\x00\x00" + data[off + 4 :]


# ------------------------------------------------------------------------------------ sampling


def test_navila_example_from_upstream():
    idx, n_pad = navila_indices(49)
    assert idx.tolist() == [0, 6, 13, 20, 27, 34, 41, 48]
    assert n_pad == 0 and idx.dtype == np.int64


def test_navila_pads_short_histories_at_the_front():
    idx, n_pad = navila_indices(3)
    assert n_pad == 5
    assert idx.tolist() == [-1, -1, -1, -1, -1, 0, 1, 2]


def test_navila_exactly_t_frames_keeps_all():
    assert navila_indices(8)[0].tolist() == list(range(8))


def test_navila_single_frame():
    idx, n_pad = navila_indices(1)
    assert idx.tolist() == [-1] * 7 + [0] and n_pad == 7


def test_navila_keeps_latest_frame_and_custom_t():
    assert navila_indices(9, t=4)[0].tolist() == [0, 2, 5, 8]
    assert navila_indices(2, t=2)[0].tolist() == [0, 1]


@pytest.mark.parametrize("args", [(0, 8), (-3, 8), (5, 1), (5, 0)])
def test_navila_rejects_bad_sizes(args):
    with pytest.raises(ValueError, match=r"must be >="):
        navila_indices(*args)


@pytest.mark.parametrize("args", [(8.0, 8), (True, 8), ("8", 8), (8, 2.5)])
def test_sampling_rejects_non_integers(args):
    with pytest.raises(TypeError, match="integer"):
        navila_indices(*args)
    with pytest.raises(TypeError, match="integer"):
        uniform_indices(*args)


def _upstream_rule(n: int, t: int) -> list[int]:
    """NaVILA's rule restated on a list of frame numbers, padding inserted as -1 like black images."""
    frames = list(range(n))
    while len(frames) < t:
        frames.insert(0, -1)
    picks = np.linspace(0, len(frames) - 1, num=t - 1, endpoint=False, dtype=int)
    return [frames[int(i)] for i in picks] + [frames[-1]]


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 5000), t=st.integers(2, 64))
def test_navila_matches_upstream_rule(n, t):
    idx, n_pad = navila_indices(n, t)
    assert idx.tolist() == _upstream_rule(n, t)
    assert len(idx) == t
    assert n_pad == max(0, t - n) == int((idx < 0).sum())
    real = idx[idx >= 0]
    assert real[-1] == n - 1  # the current observation is always the last row
    assert np.all(np.diff(real) > 0)  # no frame twice


def test_uniform_examples():
    assert uniform_indices(100, 8).tolist() == [0, 14, 28, 42, 56, 70, 84, 99]
    assert uniform_indices(5, 8).tolist() == [0, 1, 2, 3, 4]
    assert uniform_indices(1, 1).tolist() == [0]
    with pytest.raises(ValueError):
        uniform_indices(0, 8)
    with pytest.raises(ValueError):
        uniform_indices(8, 0)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 5000), k=st.integers(1, 64))
def test_uniform_property(n, k):
    idx = uniform_indices(n, k)
    assert idx.tolist() == np.linspace(0, n - 1, min(k, n)).astype(int).tolist()
    assert len(idx) == min(k, n) and idx[0] == 0
    assert np.all(np.diff(idx) > 0) and idx[-1] <= n - 1
    if min(k, n) >= 2:
        assert idx[-1] == n - 1


# ---------------------------------------------------------------------------------- safe paths


def test_resolve_under_accepts_paths_inside(tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.jpg").write_bytes(b"1")
    real_root = root.resolve()
    assert resolve_under(root, "a/x.jpg") == real_root / "a" / "x.jpg"
    assert resolve_under(root, "a/../a/x.jpg") == real_root / "a" / "x.jpg"
    assert resolve_under(root, str(root / "a" / "x.jpg")) == real_root / "a" / "x.jpg"
    assert resolve_under(root, "not/yet/there.jpg") == real_root / "not" / "yet" / "there.jpg"
    assert resolve_under(root, "frame:001.jpg") == real_root / "frame:001.jpg"  # a colon is not a URL


def test_resolve_under_follows_symlinks_inside_root(tmp_path):
    root = tmp_path / "data"
    (root / "real").mkdir(parents=True)
    (root / "real" / "x.jpg").write_bytes(b"1")
    os.symlink(root / "real", root / "alias")
    assert resolve_under(root, "alias/x.jpg") == (root / "real" / "x.jpg").resolve()


@pytest.mark.parametrize(
    "bad",
    ["../x.jpg", "a/../../x.jpg", "/etc/passwd", "http://x/y.jpg", "https://h/p.jpg", "file:///etc/passwd",
     "s3://bucket/key.jpg", "s3:bucket/key.jpg", "gs:b/k", "", "   ", "a\x00b.jpg", "C:\\frames\\x.jpg", ".", "a/.."],
)
def test_resolve_under_rejects(tmp_path, bad):
    (tmp_path / "a").mkdir()
    with pytest.raises(UnsafePath) as err:
        resolve_under(tmp_path, bad)
    assert repr(bad) in str(err.value)
    assert isinstance(err.value, NavcacheError)


@pytest.mark.parametrize("bad", [None, 3, 1.5, b"x.jpg", ["x.jpg"], Path("x.jpg")])
def test_resolve_under_rejects_non_strings(tmp_path, bad):
    with pytest.raises(UnsafePath, match="must be a string"):
        resolve_under(tmp_path, bad)


def test_resolve_under_rejects_symlink_escape(tmp_path):
    root, outside = tmp_path / "data", tmp_path / "secret"
    root.mkdir()
    outside.mkdir()
    (outside / "x.jpg").write_bytes(b"1")
    os.symlink(outside / "x.jpg", root / "link.jpg")
    os.symlink(outside, root / "dirlink")
    for rel in ("link.jpg", "dirlink/x.jpg"):
        with pytest.raises(UnsafePath, match="outside the dataset root") as err:
            resolve_under(root, rel)
        assert rel in str(err.value)


# --------------------------------------------------------------------------------------- video


def assert_colours(pixels: np.ndarray, frame_numbers, tol: float = 8.0) -> None:
    for row, i in zip(pixels, frame_numbers):
        mean = row.reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - np.array(frame_rgb(i))).max() < tol, (i, mean, frame_rgb(i))


def test_read_video_round_trip(tmp_path):
    path = write_video(tmp_path / "v.mp4", 20)
    pixels, n = read_video(path, None, expected_frames=20)
    assert n == 20 and pixels.shape == (20, H, W, 3) and pixels.dtype == np.uint8
    assert_colours(pixels, range(20))
    picked, n = read_video(path, [19, 0, 7, 7])
    assert n == 20 and picked.shape == (4, H, W, 3)
    assert_colours(picked, [19, 0, 7, 7])


def test_read_video_sampled_sees_the_count(tmp_path):
    path = write_video(tmp_path / "v.mp4", 30)
    pixels, n = read_video_sampled(path, lambda n: uniform_indices(n, 4).tolist())
    assert n == 30 and pixels.shape[0] == 4
    assert_colours(pixels, [0, 9, 19, 29])


def test_read_video_faststart_copy_is_fine(tmp_path):
    data = faststart(write_video(tmp_path / "v.mp4", 20).read_bytes())
    (tmp_path / "fast.mp4").write_bytes(data)
    pixels, n = read_video(tmp_path / "fast.mp4", [0, 19], expected_frames=20)
    assert_colours(pixels, [0, 19])


def quarantine_reason(fn, *args, **kwargs) -> str:
    with pytest.raises(Quarantine) as err:
        fn(*args, **kwargs)
    return err.value.reason


def test_read_video_missing_empty_and_text(tmp_path):
    assert "missing video file" in quarantine_reason(read_video, tmp_path / "nope.mp4", [0])
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert "empty video file" in quarantine_reason(read_video, tmp_path / "empty.mp4", [0])
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 20)
    reason = quarantine_reason(read_video, tmp_path / "text.mp4", [0])
    assert "cannot open video" in reason and "text.mp4" in reason
    (tmp_path / "dir.mp4").mkdir()
    assert "not a regular file" in quarantine_reason(read_video, tmp_path / "dir.mp4", [0])


def test_read_video_missing_moov(tmp_path):
    data = write_video(tmp_path / "v.mp4", 20).read_bytes()
    stripped = b"".join(data[o : o + s] for t, o, s in boxes(data) if t != b"moov")
    (tmp_path / "nomoov.mp4").write_bytes(stripped)
    reason = quarantine_reason(read_video, tmp_path / "nomoov.mp4", [0])
    assert "moov" in reason and "nomoov.mp4" in reason


def test_read_video_truncated_to_60_percent(tmp_path):
    data = write_video(tmp_path / "v.mp4", 20).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: int(len(data) * 0.6)])
    reason = quarantine_reason(read_video, tmp_path / "cut.mp4", [0], expected_frames=20)
    assert "truncated" in reason and "cut.mp4" in reason


def test_read_video_truncated_faststart_announcing_all_frames(tmp_path):
    data = faststart(write_video(tmp_path / "v.mp4", 20).read_bytes())
    for cut in (int(len(data) * 0.6), len(data) - 1):  # the last case decodes "fine" in decord
        (tmp_path / "cut.mp4").write_bytes(data[:cut])
        reason = quarantine_reason(read_video, tmp_path / "cut.mp4", None)
        assert "truncated" in reason and "'mdat'" in reason


def test_read_video_cut_mdat_to_eof_is_caught_by_the_sample_table(tmp_path):
    # mdat "to end of file" defeats the box walk; the samples listed past the cut give it away.
    data = mdat_size_zero(faststart(write_video(tmp_path / "v.mp4", 20).read_bytes()))
    (tmp_path / "cut.mp4").write_bytes(data[: int(len(data) * 0.6)])
    reason = quarantine_reason(read_video, tmp_path / "cut.mp4", [0, 19])
    assert "cut.mp4" in reason and "sample table lists" in reason and "'mdat' holds" in reason


@pytest.mark.parametrize("variant", ["plain", "faststart", "mdat0"])
def test_truncated_video_is_never_returned_short(tmp_path, variant):
    data = write_video(tmp_path / "v.mp4", 24).read_bytes()
    data = {"plain": data, "faststart": faststart(data), "mdat0": mdat_size_zero(faststart(data))}[variant]
    idx = uniform_indices(24, 8).tolist()
    for frac in (0.2, 0.5, 0.8, 0.95, 0.99):
        path = tmp_path / f"cut{frac}.mp4"
        path.write_bytes(data[: int(len(data) * frac)])
        try:
            pixels, n = read_video(path, idx)
        except Quarantine as e:
            assert path.name in e.reason
        else:  # only reachable when the damage hides in the last packet of an mdat-to-EOF file
            assert pixels.shape == (len(idx), H, W, 3) and n == 24


def test_read_video_count_and_index_checks(tmp_path):
    path = write_video(tmp_path / "v.mp4", 12)
    reason = quarantine_reason(read_video, path, [0], expected_frames=13)
    assert "12 frames" in reason and "13" in reason and "v.mp4" in reason
    assert "out of range" in quarantine_reason(read_video, path, [0, 12])
    # decord itself would wrap -1 to the last frame; a negative index is a bug in the caller's data
    assert "out of range" in quarantine_reason(read_video, path, [-1])
    with pytest.raises(ValueError):
        read_video(path, [])


# -------------------------------------------------------------------------------------- images


def test_read_jpegs_round_trip(tmp_path):
    paths = [write_jpeg(tmp_path / f"{i}.jpg", frame_rgb(i)) for i in range(3)]
    pixels = read_jpegs(paths)
    assert pixels.shape == (3, H, W, 3) and pixels.dtype == np.uint8
    assert_colours(pixels, range(3), tol=4)


def test_read_jpegs_accepts_zero_padding_after_eoi(tmp_path):
    p = write_jpeg(tmp_path / "a.jpg", frame_rgb(0))
    p.write_bytes(p.read_bytes() + b"\x00" * 16)
    assert read_jpegs([p]).shape == (1, H, W, 3)


def test_read_jpegs_failures_name_the_file(tmp_path):
    good = write_jpeg(tmp_path / "good.jpg", frame_rgb(0))
    data = good.read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "noeoi.jpg").write_bytes(data[:-2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    write_jpeg(tmp_path / "big.jpg", frame_rgb(1), size=(W * 2, H))
    cases = {
        "missing.jpg": "missing image file",
        "half.jpg": "truncated JPEG",
        "noeoi.jpg": "truncated JPEG",
        "empty.jpg": "empty image file",
        "text.jpg": "cannot decode image",
        "big.jpg": "frame size mismatch",
    }
    for name, expected in cases.items():
        reason = quarantine_reason(read_jpegs, [good, tmp_path / name])
        assert expected in reason and name in reason, reason


def test_black_frames():
    b = black_frames(3, 4, 5)
    assert b.shape == (3, 4, 5, 3) and b.dtype == np.uint8 and not b.any()
    assert black_frames(0, 4, 5).shape == (0, 4, 5, 3)
    with pytest.raises(ValueError):
        black_frames(-1, 4, 5)


def test_read_jpegs_ignores_exif_rotation_like_pil(tmp_path):
    # NaVILA loads frames with PIL, which leaves EXIF orientation alone; so must we.
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.new("RGB", (W, H), frame_rgb(2)).save(tmp_path / "rot.jpg", exif=exif.tobytes())
    pixels = read_jpegs([tmp_path / "rot.jpg"])
    assert pixels.shape == (1, H, W, 3)
    assert np.array_equal(pixels[0], np.asarray(Image.open(tmp_path / "rot.jpg").convert("RGB")))
