"""``preprocess: fast`` decodes reduced (issue 17 part 1 wired into the pipeline): sources hand out
frames reduced towards the encoder's input size, the features stay within a documented tolerance
of the exact path's, the fingerprint says so, and the exact path is unchanged."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from navcache.cache_specs import open_cache
from navcache.pipeline.config import load_config
from navcache.pipeline.decode import read_jpegs, read_video_sampled
from navcache.pipeline.runner import ExtractOptions, extract
from navcache.pipeline.sources import make_source
from navcache.pipeline.sources.navila import NavilaSource
from tests.helpers import write_project
from tests.pipeline.test_feed import _mp4, _textured

#: fast vs exact features of the tiny random DINOv3 (64 px input) on 160 px frames: the largest
#: CLS difference over the CLS values' spread (measured 0.011: reduced decode + uint8 resize)
FEATURE_TOL = 0.05


def _navila(root, n_eps: int = 3, size: int = 160):
    recs = []
    for e in range(n_eps):
        d = root / "train" / f"ep{e}"
        d.mkdir(parents=True)
        for k in range(6):
            rgb = np.roll(_textured(size, size, seed=e), 9 * k, axis=1)
            cv2.imwrite(str(d / f"{k}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        recs.append({"video_id": f"ep{e}", "frames": [f"ep{e}/{k}.jpg" for k in range(6)], "q": "go", "a": "stop"})
    (root / "annotations_train.json").write_text(json.dumps(recs))
    return root


def test_sources_hand_out_reduced_frames_only_with_fit(tmp_path):
    src = NavilaSource(_navila(tmp_path / "nav", n_eps=1))
    (ep,) = src.episodes("train")
    exact = src.read_frames(ep, resize_to=(64, 64))
    assert exact.pixels.shape == (8, 160, 160, 3)  # not reduced: the pixels of a plain full decode, bit for bit
    assert np.array_equal(exact.pixels[~exact.padded], read_jpegs(ep.files))
    fast = src.read_frames(ep, resize_to=(64, 64), fit=True)
    assert fast.pixels.shape == (8, 80, 80, 3) and np.array_equal(fast.indices, exact.indices)  # 1/2 still covers 64
    assert not fast.pixels[fast.padded].any()

    clip = _mp4(tmp_path / "clip.mp4", np.stack([np.roll(_textured(192, 256), 5 * k, axis=1) for k in range(5)]))
    full, n = read_video_sampled(clip, lambda n: [0, 4])
    small, _ = read_video_sampled(clip, lambda n: [0, 4], reduce_to=(64, 64))
    assert n == 5 and full.shape == (2, 192, 256, 3) and small.shape == (2, 96, 128, 3)  # 1/4 would not cover 64 rows
    ref = np.stack([cv2.resize(f, (128, 96), interpolation=cv2.INTER_AREA) for f in full]).astype(np.float64)
    assert np.abs(small - ref).mean() < 3.0
    vids = tmp_path / "vids"
    (vids / "train").mkdir(parents=True)
    (vids / "train" / "c.mp4").write_bytes(clip.read_bytes())
    vsrc = make_source("videos", vids)
    (vep,) = vsrc.episodes("train")
    assert vsrc.read_frames(vep, resize_to=(64, 64)).pixels.shape[1:] == (192, 256, 3)
    assert vsrc.read_frames(vep, resize_to=(64, 64), fit=True).pixels.shape[1:] == (96, 128, 3)


@pytest.fixture
def frame_shapes(monkeypatch):
    """Shapes of the frames the NaVILA source hands the stage (the real decode, recorded)."""
    seen = []
    real = NavilaSource.read_frames

    def read_frames(self, *a, **kw):
        out = real(self, *a, **kw)
        seen.append(out.pixels.shape[1:3])
        return out

    monkeypatch.setattr(NavilaSource, "read_frames", read_frames)
    return seen


def _build(folder, data, model, **settings):
    folder.mkdir()
    cfg = write_project(folder, data, model, cache_root=str(folder / "cache"), part_size=2, **settings)
    s = extract(load_config(cfg), ExtractOptions("train", only="frame-features"))
    assert not s.errors, s.errors
    return open_cache(folder / "cache/nav/train/frame_features")


def test_fast_preprocess_decodes_reduced_and_stays_close_to_exact(tmp_path, tiny_model, frame_shapes):
    data = _navila(tmp_path / "data")
    exact = _build(tmp_path / "exact", data, tiny_model)
    assert set(frame_shapes) == {(160, 160)}
    frame_shapes.clear()
    fast = _build(tmp_path / "fast", data, tiny_model, encoder={"model": str(tiny_model), "preprocess": "fast"})
    assert set(frame_shapes) == {(80, 80)}
    ids = list(exact.episodes)
    assert ids == list(fast.episodes) and len(ids) == 3
    a = np.concatenate([np.asarray(exact[i]["cls"], np.float32) for i in ids])
    b = np.concatenate([np.asarray(fast[i]["cls"], np.float32) for i in ids])
    rel = float(np.abs(a - b).max() / a.std())
    print(f"fast vs exact: max |cls difference| / cls std = {rel:.4f}")
    assert 0 < rel <= FEATURE_TOL
    fps = {d: {e["fingerprint"] for p in (tmp_path / d / "cache/nav/train/frame_features/parts").glob("*/part.json")
               for e in json.loads(p.read_text())["episodes"]} for d in ("exact", "fast")}
    assert len(fps["exact"]) == 3 and not fps["exact"] & fps["fast"], "fast frames must never be taken for exact ones"


@pytest.fixture
def imdecodes(monkeypatch):
    """Images OpenCV's decoder was asked for (the real decoder, counted)."""
    seen = []
    real = cv2.imdecode

    def imdecode(buf, flags):
        seen.append(flags)
        return real(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", imdecode)
    return seen


@pytest.mark.parametrize("memo_bytes", [256 << 20, 0])
def test_each_distinct_frame_is_decoded_once_per_run(tmp_path, imdecodes, memo_bytes):
    from navcache.pipeline.decode import DecodedFrames
    from tests.helpers import make_navila

    data = make_navila(tmp_path / "data", n_episodes=3)
    src = NavilaSource(data)
    src.decoded = DecodedFrames(memo_bytes)
    eps = src.episodes("train")
    distinct = len({f for e in eps for f in e.files})
    rows = sum(len(e.files) for e in eps)
    assert distinct < rows  # histories share frames
    got = {e.episode_id: src.read_frames(e) for e in eps}
    if memo_bytes:
        assert len(imdecodes) == src.decoded.decodes == distinct
    else:
        assert len(imdecodes) == rows
    plain = NavilaSource(data)
    plain.decoded = DecodedFrames(0)
    for e in eps:
        want = plain.read_frames(e)
        assert np.array_equal(got[e.episode_id].pixels, want.pixels) and got[e.episode_id].pixels.flags.writeable
    (tmp_path / "data" / eps[0].record["split"] / eps[0].record["frames"][-1]).write_bytes(b"\xff\xd8 not a jpeg any more \xff\xd9")
    from navcache.pipeline.errors import Quarantine

    with pytest.raises(Quarantine, match="cannot decode"):
        src.read_frames(eps[0])  # a rewritten file is a new version: decoded again, never served from the memo
