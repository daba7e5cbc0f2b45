"""Video frames decoded once per run (issue 17 part 2): ``decode.DecodedVideoFrames`` on real
H.264 mp4s. Decoding passes are counted at PyAV's ``av.open`` (the real decoder opens the file
once per pass; the strict reader decodes the whole stream in each), pixels are compared with a
plain ``read_video_sampled`` of the same frames."""
from __future__ import annotations

import os

import av
import numpy as np
import pytest

from navcache.pipeline.decode import DecodedVideoFrames, read_video_sampled
from navcache.pipeline.errors import Quarantine
from navcache.pipeline.sources.videos import VideosSource

N, W, H = 24, 64, 48


def write_clip(path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for k in range(N):
            rgb = np.clip(rng.normal(128, 40, (H, W, 3)) + 4 * k, 0, 255).astype(np.uint8)
            out.mux(s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(s.encode(None))


@pytest.fixture
def opened(monkeypatch):
    """Counts the decoder's passes: every open of a file by PyAV."""
    seen: list[str] = []
    real = av.open

    def counting(file, *a, **kw):
        seen.append(str(file))
        return real(file, *a, **kw)

    monkeypatch.setattr(av, "open", counting)
    return seen


def plain(path, idx, **kw) -> np.ndarray:
    return read_video_sampled(path, lambda n: idx, **kw)[0]


def test_frames_shared_by_requests_and_copies_are_decoded_once(tmp_path, opened):
    clip, copy = tmp_path / "a.mp4", tmp_path / "copy.mp4"
    write_clip(clip, 0)
    os.link(clip, copy)  # another path, the same bytes
    want = {str(clip): [plain(clip, [0, 5, 10]), plain(clip, [5, 10]), plain(clip, [0, 7]), plain(clip, [7])]}
    opened.clear()
    memo = DecodedVideoFrames(64 << 20)
    requests = [(clip, [0, 5, 10]), (clip, [5, 10]), (copy, [10, 0, 5]), (clip, [0, 7]), (copy, [7])]
    got = [memo.read_sampled(p, lambda n, i=i: i) for p, i in requests]
    # distinct frames needed: {0, 5, 10} then {7}: two passes, never one per request
    assert memo.passes == 2 and len(opened) == 2
    assert all(n == N for _, n in got)
    ref = want[str(clip)]
    np.testing.assert_array_equal(got[0][0], ref[0])
    np.testing.assert_array_equal(got[1][0], ref[1])
    np.testing.assert_array_equal(got[2][0], ref[0][[2, 0, 1]])
    np.testing.assert_array_equal(got[3][0], ref[2])
    np.testing.assert_array_equal(got[4][0], ref[3])
    got[0][0][:] = 0  # callers get their own arrays: the memo's stay as decoded
    np.testing.assert_array_equal(memo.read_sampled(clip, lambda n: [0, 5, 10])[0], ref[0])
    assert memo.passes == 2


def test_budget_bounds_the_bytes_and_evicts_least_recent(tmp_path, opened):
    clip = tmp_path / "a.mp4"
    write_clip(clip, 1)
    frame = H * W * 3
    memo = DecodedVideoFrames(2 * frame)
    memo.read_sampled(clip, lambda n: [0, 1, 2])
    assert memo.bytes <= 2 * frame
    memo.read_sampled(clip, lambda n: [1, 2])  # kept: the two most recent
    assert memo.passes == 1
    memo.read_sampled(clip, lambda n: [0])  # dropped: decoded again
    assert memo.passes == 2 and memo.bytes <= 2 * frame
    np.testing.assert_array_equal(memo.read_sampled(clip, lambda n: [0])[0], plain(clip, [0]))
    zero = DecodedVideoFrames(0)
    zero.read_sampled(clip, lambda n: [3])
    zero.read_sampled(clip, lambda n: [3])
    assert zero.passes == 2 and zero.bytes == 0


def test_a_rewritten_file_is_decoded_again_and_checks_still_apply(tmp_path):
    clip = tmp_path / "a.mp4"
    write_clip(clip, 2)
    memo = DecodedVideoFrames(64 << 20)
    first = memo.read_sampled(clip, lambda n: [4])[0]
    with pytest.raises(Quarantine, match="annotation says 30"):
        memo.read_sampled(clip, lambda n: [4], expected_frames=30)  # from the memo: same check, same words
    with pytest.raises(Quarantine, match="out of range"):
        memo.read_sampled(clip, lambda n: [N])
    tmp = tmp_path / "new.mp4"
    write_clip(tmp, 3)
    os.replace(tmp, clip)
    again = memo.read_sampled(clip, lambda n: [4])[0]
    assert memo.passes == 2 and not np.array_equal(first, again)
    np.testing.assert_array_equal(again, plain(clip, [4]))


def test_scaled_requests_are_kept_apart(tmp_path):
    clip = tmp_path / "a.mp4"
    write_clip(clip, 4)
    memo = DecodedVideoFrames(64 << 20)
    full = memo.read_sampled(clip, lambda n: [2])[0]
    small = memo.read_sampled(clip, lambda n: [2], size=(32, 24))[0]
    assert full.shape == (1, H, W, 3) and small.shape == (1, 24, 32, 3) and memo.passes == 2
    np.testing.assert_array_equal(small, plain(clip, [2], size=(32, 24)))


def test_videos_source_decodes_a_clip_shared_by_two_episodes_once(tmp_path, opened):
    train = tmp_path / "train"
    train.mkdir()
    write_clip(train / "a.mp4", 5)
    os.link(train / "a.mp4", train / "b.mp4")
    src = VideosSource(tmp_path, num_frames=6)
    eps = src.episodes("train")
    assert [e.episode_id for e in eps] == ["a", "b"]
    opened.clear()
    a, b = (src.read_frames(e) for e in eps)
    assert src.decoded.passes == 1
    np.testing.assert_array_equal(a.pixels, b.pixels)
    np.testing.assert_array_equal(a.pixels, plain(train / "a.mp4", a.indices.tolist()))


def test_run_budget_is_validated():
    from navcache.pipeline.config import RunConfig

    assert RunConfig().decoded_frames_mb == 256
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="decoded_frames_mb"):
            RunConfig(decoded_frames_mb=bad)


def test_lerobot_segments_read_by_two_stages_are_decoded_once(opened):
    """The real lerobot package's v3.0 fixture (AV1 segments of shared files): a second read of an
    episode's camera (geometry after frame-features; spatial's extra camera reads) decodes nothing."""
    from pathlib import Path

    from navcache.pipeline.sources import make_source

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "lerobot" / "v30_video"
    src, plain_src = make_source("lerobot", fixture), make_source("lerobot", fixture)
    plain_src.decoded.max_bytes = 0
    ep = src.episodes("train")[0]
    plain_src.episodes("train")
    want = plain_src.read_frames(ep).pixels
    opened.clear()
    first, second = src.read_frames(ep), src.read_frames(ep)
    assert len(opened) == 1 and src.decoded.passes == 1
    np.testing.assert_array_equal(first.pixels, want)
    np.testing.assert_array_equal(second.pixels, want)
    sub = src.read_camera(ep, src.camera, [int(first.indices[1])])
    np.testing.assert_array_equal(sub[0], want[1])
    assert len(opened) == 1
