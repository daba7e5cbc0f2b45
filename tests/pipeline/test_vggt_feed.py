"""VGGT's feed (issue 17 part 1): the uint8 hand-over is bit-identical to the float path, and
``preprocess: fast`` stays within its pinned distance of VGGT's own PIL loader."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from navcache.pipeline.decode import read_image
from navcache.pipeline.encoders.vggt import VGGTAdapter, VGGTSettings, decode_target, preprocess_crop, processed_size
from tests.pipeline.test_feed import _textured
from tests.standins.vggt_standin import make_standin

STANDIN = "tests.standins.vggt_standin:StandInVGGT"
#: ``preprocess: fast`` against PIL (same decoded pixels): max and mean |difference| in [0, 1] units
FAST_MAX, FAST_MEAN = 2 / 255 + 1e-6, 0.05 / 255


def _loader(frame: np.ndarray) -> torch.Tensor:
    """VGGT's crop-mode loader for one decoded RGB frame, step by step with PIL (an independent route)."""
    from PIL import Image

    img = Image.fromarray(frame)
    w, h = img.size
    nh = round(h * (518 / w) / 14) * 14
    t = torch.from_numpy(np.asarray(img.resize((518, nh), Image.Resampling.BICUBIC)).copy()).permute(2, 0, 1).float() / 255
    if nh > 518:
        t = t[:, (nh - 518) // 2 : (nh - 518) // 2 + 518]
    return t


@pytest.mark.parametrize("hw", [(480, 640), (512, 512), (700, 400), (37, 53)])
def test_uint8_hand_over_divided_later_is_the_loaders_float_tensor(hw):
    frames = np.stack([_textured(*hw, seed=s) for s in range(2)])
    u8 = preprocess_crop(frames, as_uint8=True)
    assert u8.dtype == torch.uint8 and u8.is_contiguous(memory_format=torch.channels_last) and u8.shape == (2, 3, *processed_size(*hw))
    assert torch.equal(u8.float().div_(255), preprocess_crop(frames))
    assert torch.equal(preprocess_crop(frames), torch.stack([_loader(f) for f in frames]))


@pytest.mark.parametrize("hw", [(480, 640), (512, 512), (720, 1280), (700, 400), (100, 60), (37, 53)])
def test_fast_is_within_two_grey_levels_of_pil(hw):
    frames = np.stack([_textured(*hw, seed=s) for s in range(2)])
    exact, fast = preprocess_crop(frames), preprocess_crop(frames, fast=True)
    assert fast.dtype == torch.float32 and fast.shape == exact.shape and fast.is_contiguous()
    d = (fast - exact).abs()
    assert float(d.max()) <= FAST_MAX and float(d.mean()) <= FAST_MEAN, (float(d.max()) * 255, float(d.mean()) * 255)
    assert torch.equal(preprocess_crop(frames, fast=True, as_uint8=True).float().div_(255), fast)


def test_fast_holds_on_noise_and_portrait_rotation():
    """Noise is the worst case for rounding differences; rotation happens before the resize."""
    frames = np.random.default_rng(0).integers(0, 256, (2, 300, 200, 3), dtype=np.uint8)
    exact, fast = preprocess_crop(frames, rotate_portrait=True), preprocess_crop(frames, rotate_portrait=True, fast=True)
    assert fast.shape == exact.shape == (2, 3, *processed_size(200, 300))
    assert float((fast - exact).abs().max()) <= FAST_MAX


def test_fast_reduced_decode_keeps_the_width_and_stays_near_exact(tmp_path):
    """A 1280x720 JPEG decodes at 640x360 for VGGT's 518 width (JPEG DCT scaling): same output
    size; the distance to the full-size exact path is the reduced decode's (printed, bounded)."""
    rgb = _textured(720, 1280, seed=3)
    path = tmp_path / "f.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    full = read_image(path)
    small = read_image(path, decode_target(), fit=True)
    assert small.shape == (360, 640, 3)
    assert read_image(path, decode_target(rotate_portrait=True), fit=True).shape == (720, 1280, 3)  # 720 < 2 x 518
    exact, fast = preprocess_crop(full[None]), preprocess_crop(small[None], fast=True)
    assert fast.shape == exact.shape == (1, 3, 294, 518)
    d = (fast - exact).abs()
    print(f"reduced decode + fast vs exact: max {float(d.max()) * 255:.1f}, mean {float(d.mean()) * 255:.2f} grey levels")
    assert float(d.mean()) <= 1.5 / 255 and float(d.max()) <= 12 / 255  # measured 0.72 / 5


def test_adapter_infers_the_same_from_uint8_and_from_float(tmp_path):
    model = make_standin(tmp_path / "standin", seed=0, embed_dim=16)
    ad = VGGTAdapter(VGGTSettings(model=str(model), model_class=STANDIN, device="cpu"))
    frames = np.random.default_rng(1).integers(0, 256, (3, 60, 80, 3), dtype=np.uint8)
    a = ad.infer(preprocess_crop(frames))
    b = ad.infer(preprocess_crop(frames, as_uint8=True))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert ad.preprocess(frames).dtype == torch.float32  # a CPU model gets floats from the adapter


def test_preprocess_setting_validated_and_in_the_identity_only_when_fast(tmp_path):
    with pytest.raises(ValueError, match="preprocess.*exact, fast"):
        VGGTSettings(preprocess="quick")
    kw = dict(model=str(tmp_path), model_class=STANDIN, device="cpu")
    exact = VGGTAdapter(VGGTSettings(**kw)).output_identity()["preprocess"]
    assert exact == {"mode": "crop", "target": 518, "patch": 14, "resample": "PIL.BICUBIC"}  # fingerprints of existing caches
    assert VGGTAdapter(VGGTSettings(preprocess="fast", **kw)).output_identity()["preprocess"] != exact


# -- preprocess: fast on CUDA: the CPU hands over decoded uint8, the device resizes (run here on CPU tensors)

#: ``device_crop`` (float antialiased bicubic) against PIL, [0, 1] units, on natural-looking frames
DEVICE_MAX, DEVICE_MEAN = 2 / 255, 0.4 / 255


@pytest.mark.parametrize("hw", [(480, 640), (512, 512), (720, 1280), (700, 400), (37, 53)])
def test_device_crop_is_within_two_grey_levels_of_pil(hw):
    from navcache.pipeline.encoders.vggt import device_crop, frames_for_device

    frames = np.stack([_textured(*hw, seed=s) for s in range(2)])
    u8 = frames_for_device(frames)
    assert u8.dtype == torch.uint8 and u8.shape == (2, 3, *hw)
    got = device_crop(u8.float().div_(255))
    exact = preprocess_crop(frames)
    assert got.shape == exact.shape
    d = (got - exact).abs()
    assert float(d.max()) <= DEVICE_MAX and float(d.mean()) <= DEVICE_MEAN, (float(d.max()) * 255, float(d.mean()) * 255)
    assert torch.equal(device_crop(exact), exact)  # already the crop's size: untouched


def test_device_path_rotates_like_the_cpu_path_and_infer_resizes_uint8(tmp_path):
    from navcache.pipeline.encoders.vggt import device_crop, frames_for_device

    frames = np.stack([_textured(300, 200, seed=s) for s in range(2)])
    rotated = device_crop(frames_for_device(frames, rotate_portrait=True).float().div_(255))
    assert rotated.shape == preprocess_crop(frames, rotate_portrait=True).shape == (2, 3, *processed_size(200, 300))
    model = make_standin(tmp_path / "standin", seed=0, embed_dim=16)
    ad = VGGTAdapter(VGGTSettings(model=str(model), model_class=STANDIN, device="cpu"))
    small = np.stack([_textured(60, 80, seed=s) for s in range(3)])
    a = ad.infer(frames_for_device(small))  # unresized uint8: resized and cropped inside infer
    b = ad.infer(device_crop(frames_for_device(small).float().div_(255)))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert a["depth"].shape == (3, *processed_size(60, 80))


def test_geometry_stage_prepares_fast_within_the_bound_of_exact(tmp_path):
    """The stage's own prepare, exact vs fast, on a real mp4 of the videos source."""
    import av

    from navcache.pipeline.sources.videos import VideosSource
    from navcache.pipeline.stages.geometry import GeometrySettings, GeometryStage

    (tmp_path / "train").mkdir()
    with av.open(str(tmp_path / "train" / "clip.mp4"), "w") as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for k in range(6):
            out.mux(s.encode(av.VideoFrame.from_ndarray(_textured(48, 64, seed=k), format="rgb24")))
        out.mux(s.encode(None))
    src = VideosSource(tmp_path, num_frames=4)
    (ep,) = src.episodes("train")
    got = {}
    for mode in ("exact", "fast"):
        vggt = VGGTSettings(model=str(tmp_path), model_class=STANDIN, device="cpu", preprocess=mode)
        stage = GeometryStage(GeometrySettings(vggt=vggt, image_size=processed_size(48, 64)), src, {})
        got[mode] = stage.prepare(ep, {}).payload
    (a, ia), (b, ib) = got["exact"], got["fast"]
    assert a.shape == b.shape == (4, 3, *processed_size(48, 64)) and a.dtype == b.dtype == torch.float32
    assert np.array_equal(ia, ib)
    assert float((a - b).abs().max()) <= FAST_MAX
