"""The fast feed (issue 17 part 1): reduced-size decoding and uint8 preprocessing deliver the
shapes and dtypes of the exact path, within the documented tolerance of its pixels."""
from __future__ import annotations

import av
import cv2
import numpy as np
import pytest
import torch

from navcache.pipeline.decode import read_image, read_jpegs, read_video, reduction
from navcache.pipeline.encoders.hf_preprocessing import UnsupportedPreprocessing, build_preprocessor
from navcache.pipeline.encoders.hf_vision import EncoderSettings, HFVisionEncoder
from navcache.pipeline.encoders.tiny import DINOV3_PROCESSOR

#: the fast path's bound: one grey level before normalising, over the smallest ImageNet std
FAST_TOL = 1 / 255 / min(DINOV3_PROCESSOR["image_std"]) + 1e-5


def _textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth picture with edges and noise: uint8 [h, w, 3] (JPEG/H.264 see real-ish content)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 90 * np.sin(x / 23.0 + c) * np.cos(y / 31.0 - c) for c in range(3)], -1)
    base[(x // 40 + y // 40) % 2 == 0] += 30
    return np.clip(base + rng.normal(0, 4, (h, w, 1)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("hw", [(480, 640), (512, 512), (37, 53), (224, 224)])
def test_fast_dinov3_is_within_one_grey_level_of_the_exact_path(hw):
    frames = np.stack([_textured(*hw, seed=s) for s in range(2)])
    exact = build_preprocessor(DINOV3_PROCESSOR)(frames)
    fast = build_preprocessor(DINOV3_PROCESSOR, fast=True)(frames)
    assert fast.dtype == exact.dtype == torch.float32 and fast.shape == exact.shape == (2, 3, 224, 224)
    assert fast.is_contiguous()
    diff = float((fast - exact).abs().max())
    assert diff <= FAST_TOL, diff
    if hw == (224, 224):  # nothing to resize: both paths only rescale and normalise
        assert diff <= 1e-6


def test_exact_dinov3_on_an_explicit_cpu_device_and_from_a_torch_tensor_is_the_same():
    frames = np.stack([_textured(120, 160, seed=s) for s in range(3)])
    pre = build_preprocessor(DINOV3_PROCESSOR)
    want = pre(frames)
    assert torch.equal(pre(frames, device="cpu"), want)
    assert torch.equal(pre(torch.from_numpy(frames)), want)
    with pytest.raises(ValueError, match="uint8"):
        pre(frames.astype(np.float32))


def test_fast_is_refused_for_towers_whose_processor_navcache_runs_as_is():
    config = {"image_processor_type": "SiglipImageProcessor", "size": {"height": 224, "width": 224}}
    with pytest.raises(UnsupportedPreprocessing, match="fast.*DINOv3ViTImageProcessor.*SiglipImageProcessor"):
        build_preprocessor(config, "google/siglip", fast=True)


def test_encoder_setting_preprocess_is_validated_and_enters_the_identity_only_when_fast(tiny_model):
    with pytest.raises(ValueError, match="preprocess must be one of exact, fast"):
        EncoderSettings(model=str(tiny_model), preprocess="quick")
    exact = HFVisionEncoder(EncoderSettings(model=str(tiny_model), device="cpu"))
    fast = HFVisionEncoder(EncoderSettings(model=str(tiny_model), device="cpu", preprocess="fast"))
    assert "preprocess" not in exact.identity()  # caches built before the option keep their fingerprints
    assert exact.identity() != fast.identity()
    frames = np.stack([_textured(96, 128, seed=s) for s in range(2)])
    a, b = exact.preprocess(frames), fast.preprocess(frames)
    assert a.shape == b.shape == (2, 3, 64, 64) and a.device.type == b.device.type == "cpu"
    assert 0 < float((a - b).abs().max()) <= FAST_TOL


def _jpeg(path, rgb: np.ndarray):
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def test_fit_decodes_jpegs_reduced_yet_covering_the_target(tmp_path):
    rgb = _textured(512, 512)
    paths = [_jpeg(tmp_path / f"{k}.jpg", rgb) for k in range(2)]
    full = read_image(paths[0], resize_to=(224, 224))
    assert full.shape == (512, 512, 3)  # default: only huge images are reduced, pixels as before
    half = read_jpegs(paths, resize_to=(224, 224), fit=True)
    assert half.shape == (2, 256, 256, 3) and half.dtype == np.uint8
    assert reduction((512, 512), (224, 224), fit=True) == 2 and reduction((512, 512), (300, 224), fit=True) == 1
    assert reduction((2048, 1536), (224, 224), fit=True) == 4  # 512x384 still covers 224x224
    # DCT scaling is a proper downscale: close to the full decode averaged 2x2
    ref = full.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
    assert np.abs(half.astype(np.float64) - ref).mean() < 2.0


def _mp4(path, frames: np.ndarray):
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"crf": "18"}
        for f in frames:
            out.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(s.encode(None))
    return path


def test_video_frames_come_scaled_by_the_decoder_with_counts_still_checked(tmp_path):
    frames = np.stack([np.roll(_textured(120, 160), 7 * k, axis=1) for k in range(6)])
    path = _mp4(tmp_path / "clip.mp4", frames)
    full, n = read_video(path, [5, 0, 3])
    small, n2 = read_video(path, [5, 0, 3], size=(64, 48))
    assert n == n2 == 6 and full.shape == (3, 120, 160, 3) and small.shape == (3, 48, 64, 3) and small.dtype == np.uint8
    # the decoder's AREA scaler against the full frames resized the same way by OpenCV: a few grey levels
    ref = np.stack([cv2.resize(f, (64, 48), interpolation=cv2.INTER_AREA) for f in full]).astype(np.float64)
    assert np.abs(small - ref).mean() < 3.0
    with pytest.raises(ValueError, match="size must be"):
        read_video(path, [0], size=(0, 48))
    with pytest.raises(ValueError, match="size must be"):
        read_video(path, [0], size=64)
    from navcache.pipeline.errors import Quarantine

    with pytest.raises(Quarantine, match="annotation says 7"):
        read_video(path, [0], expected_frames=7, size=(64, 48))
