"""Every tower's pixels equal its own transformers image processor's, built from the family's
published preprocessor_config.json values (no downloads), across odd sizes and aspect ratios."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from navcache.pipeline.encoders.hf_preprocessing import UnsupportedPreprocessing, build_preprocessor
from navcache.pipeline.encoders.hf_vision import EncoderSettings, HFVisionEncoder

IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
CLIP_STATS = {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}
# the published configs' values (facebook/dinov2-*, facebook/dinov2-with-registers-*, google/siglip-*,
# google/siglip2-*-patch16-{224,384}, openai/clip-vit-*: current and legacy feature-extractor form)
DINOV2 = {"image_processor_type": "BitImageProcessor", "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
          "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True, **IMAGENET, "resample": 3,
          "rescale_factor": 1 / 255, "size": {"shortest_edge": 256}}
FAMILIES = {
    "dinov2": DINOV2,
    "dinov2-with-registers": dict(DINOV2, processor_class="BitImageProcessor"),
    "siglip": {"image_processor_type": "SiglipImageProcessor", "processor_class": "SiglipProcessor", "do_normalize": True, "do_rescale": True,
               "do_resize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 3, "rescale_factor": 1 / 255,
               "size": {"height": 224, "width": 224}},
    "siglip2": {"image_processor_type": "SiglipImageProcessor", "processor_class": "SiglipProcessor", "do_normalize": True, "do_rescale": True,
                "do_resize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 2, "rescale_factor": 1 / 255,
                "size": {"height": 384, "width": 384}},
    "clip": {"image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor", "crop_size": {"height": 224, "width": 224},
             "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True, **CLIP_STATS,
             "resample": 3, "rescale_factor": 1 / 255, "size": {"shortest_edge": 224}},
    "clip-legacy": {"feature_extractor_type": "CLIPFeatureExtractor", "crop_size": 224, "do_center_crop": True, "do_normalize": True,
                    "do_resize": True, **CLIP_STATS, "resample": 3, "size": 224},
}
DINOV3 = {"image_processor_type": "DINOv3ViTImageProcessorFast", "do_resize": True, "size": {"height": 224, "width": 224}, "resample": 2,
          "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, **IMAGENET, "crop_size": None, "do_center_crop": None,
          "data_format": "channels_first", "default_to_square": True, "device": None, "disable_grouping": None, "do_convert_rgb": None,
          "input_data_format": None, "return_tensors": None}
SIZES = [(37, 53), (480, 640), (640, 480), (1, 300), (300, 1), (3, 7), (224, 224), (255, 257), (720, 1280)]
TOL = 1e-5


def _frames(h: int, w: int, n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + h * 7919 + w).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _auto_processor(tmp_path, config: dict):
    """The processor a user gets: AutoImageProcessor on a folder holding the config (PIL backend, no torchvision)."""
    from transformers import AutoImageProcessor

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    return AutoImageProcessor.from_pretrained(str(tmp_path), backend="pil")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_pixels_equal_the_transformers_processor(tmp_path, family):
    config = FAMILIES[family]
    proc = _auto_processor(tmp_path, config)
    ours = build_preprocessor(config)
    for h, w in SIZES:
        frames = _frames(h, w)
        got = ours(frames)
        # the canonical call: one PIL image at a time
        want = torch.cat([torch.as_tensor(proc(Image.fromarray(f), return_tensors="np")["pixel_values"]) for f in frames])
        assert got.dtype == torch.float32 and got.shape == want.shape, (family, h, w, got.shape, want.shape)
        diff = float((got - want).abs().max())
        assert diff <= TOL, f"{family} {h}x{w}: max |diff| {diff}"


def test_dinov2_is_a_224_bicubic_centre_crop_not_a_256_squash():
    out = build_preprocessor(DINOV2)(_frames(480, 640))
    assert out.shape == (2, 3, 224, 224)


def test_dinov3_equals_its_processor_when_torchvision_is_there():
    pytest.importorskip("torchvision")  # DINOv3's processor exists only in the torchvision backend
    from transformers import DINOv3ViTImageProcessor

    proc = DINOv3ViTImageProcessor.from_dict({k: v for k, v in DINOV3.items() if k != "image_processor_type"})
    ours = build_preprocessor(DINOV3)
    for h, w in SIZES:
        frames = _frames(h, w)
        want = torch.as_tensor(np.asarray(proc(list(frames), input_data_format="channels_last", return_tensors="np")["pixel_values"]))
        assert float((ours(frames) - want).abs().max()) <= TOL, (h, w)


def test_dinov3_keeps_the_pixels_existing_caches_were_made_with():
    """DINOv3's identity is unchanged, so its pixels must be too: resize then rescale (the old order)
    and rescale then resize (the processor's order) differ by float rounding only."""
    ours = build_preprocessor(DINOV3)
    mean, std = torch.tensor(IMAGENET["image_mean"]).view(1, 3, 1, 1), torch.tensor(IMAGENET["image_std"]).view(1, 3, 1, 1)
    for h, w in SIZES:
        frames = _frames(h, w)
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
        if (h, w) != (224, 224):
            x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
        old = (x / 255 - mean) / std
        assert float((ours(frames) - old).abs().max()) <= 5e-6


@pytest.mark.parametrize(
    "config, named",
    [
        (dict(DINOV2, crop_pct=0.875), ["crop_pct"]),
        (dict(FAMILIES["siglip"], data_format="channels_last"), ["data_format"]),
        (dict(DINOV3, do_center_crop=True, resample=3), ["do_center_crop", "resample"]),
        (dict(DINOV3, size={"shortest_edge": 256}), ["size"]),
        (dict(DINOV3, do_pad=True, pad_size={"height": 256, "width": 256}), ["do_pad"]),
        (dict(DINOV3, rescale_offset=True), ["rescale_offset"]),
        ({"image_processor_type": "Siglip2ImageProcessor", "max_num_patches": 256, "patch_size": 16}, ["Siglip2ImageProcessor", "NaFlex"]),
        ({"image_processor_type": "ViTImageProcessor"}, ["ViTImageProcessor", "BitImageProcessor", "DINOv3ViTImageProcessor"]),
    ],
)
def test_unsupported_options_are_refused_by_name(config, named):
    with pytest.raises(UnsupportedPreprocessing) as e:
        build_preprocessor(config, "some/model")
    for name in named:
        assert name in str(e.value)
    assert "some/model" in str(e.value)


def _tiny_dinov2(path, config: dict, registers: int = 0):
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    kw = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, patch_size=14, image_size=224)
    torch.manual_seed(0)
    model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**kw, num_register_tokens=registers)) if registers else Dinov2Model(Dinov2Config(**kw))
    model.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("registers", [0, 4])
def test_encoder_uses_the_towers_own_preprocessing(tmp_path, registers):
    model = _tiny_dinov2(tmp_path / "dinov2", DINOV2, registers)
    enc = HFVisionEncoder(EncoderSettings(model=str(model), device="cpu"))
    frames = _frames(480, 640)
    x = enc.preprocess(frames)
    from transformers import AutoImageProcessor

    want = AutoImageProcessor.from_pretrained(str(model), backend="pil")([Image.fromarray(f) for f in frames], return_tensors="pt")["pixel_values"]
    assert x.shape == want.shape == (2, 3, 224, 224) and float((x - want).abs().max()) <= TOL
    assert enc.check("stages.frame-features.encoder.model") == "folder"
    assert enc.identity()["preprocessing"] == "transformers-processor"  # caches of the old squash are not reused
    cls, patches = enc.encode(x)
    assert cls.shape == (2, 24) and patches.shape == (2, 16, 16, 24)


def test_encoder_check_refuses_unsupported_options_before_any_work(tmp_path):
    model = _tiny_dinov2(tmp_path / "dinov2", dict(DINOV2, crop_pct=0.875))
    enc = HFVisionEncoder(EncoderSettings(model=str(model), device="cpu"))
    with pytest.raises(UnsupportedPreprocessing, match=r"stages\.frame-features\.encoder\.model.*crop_pct"):
        enc.check("stages.frame-features.encoder.model")
