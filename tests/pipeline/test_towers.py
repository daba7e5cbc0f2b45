"""Single transformers towers through frame-features' encoder: the right class (vision tower of
dual-encoder checkpoints), token layout (CLS or not, registers) and layer, checked against the
transformers model run directly; and the fused tower end to end through the stage."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from navcache.pipeline.encoders.hf_vision import EncoderSettings, HFVisionEncoder
from navcache.pipeline.encoders.tiny import make_random_tower
from navcache.pipeline.errors import NavcacheError

S = 56
#: arch -> (transformers class run as the reference, prefix tokens before the patches, has CLS)
CASES = {
    "dinov2": ("Dinov2Model", 1, True),
    "dinov2-reg": ("Dinov2WithRegistersModel", 5, True),
    "siglip": ("SiglipVisionModel", 0, False),
    "siglip-dual": ("SiglipModel", 0, False),
    "clip": ("CLIPVisionModel", 1, True),
    "clip-dual": ("CLIPModel", 1, True),
}


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    return {a: make_random_tower(root / a, a, seed=3, image_size=S) for a in CASES}


def _reference(arch: str, path, x, layer):
    import transformers

    name, prefix, has_cls = CASES[arch]
    model = getattr(transformers, name).from_pretrained(str(path)).eval()
    if name.endswith("Model") and hasattr(model, "vision_model") and not name.endswith("VisionModel"):
        model = model.vision_model  # the dual model's own vision tower
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
    h = out.last_hidden_state if layer == "last" else out.hidden_states[layer]
    patches = h[:, prefix:]
    return (h[:, 0] if has_cls else patches.mean(1)), patches


@pytest.mark.parametrize("arch, layer", [(a, -2) for a in sorted(CASES)] + [("siglip-dual", "last"), ("dinov2-reg", "last")])
def test_tower_layout_and_layer_match_the_model(towers, arch, layer):
    enc = HFVisionEncoder(EncoderSettings(model=str(towers[arch]), device="cpu", layer=layer))
    x = enc.preprocess(np.random.default_rng(0).integers(0, 256, (2, 45, 70, 3), dtype=np.uint8))
    cls, patches = enc.encode(x)
    want_cls, want_patches = _reference(arch, towers[arch], x, layer)
    g = S // 14
    assert patches.shape == (2, g, g, 32) and enc.hidden_size() == 32
    torch.testing.assert_close(patches, want_patches.reshape(2, g, g, 32), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cls, want_cls, rtol=1e-5, atol=1e-5)
    assert ("layer" in enc.identity()) == (layer != "last")  # default identities keep their keys


def test_dinov3_layers(tiny_model):
    from transformers import DINOv3ViTModel

    enc = HFVisionEncoder(EncoderSettings(model=str(tiny_model), device="cpu", layer=-2))
    x = enc.preprocess(np.zeros((1, 64, 64, 3), np.uint8) + 90)
    _, patches = enc.encode(x)
    with torch.no_grad():
        h = DINOv3ViTModel.from_pretrained(str(tiny_model)).eval()(pixel_values=x, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(patches.reshape(1, -1, patches.shape[-1]), h[:, 5:], rtol=1e-5, atol=1e-5)  # CLS + 4 registers


def test_bad_layer_and_naflex_are_refused(towers, tmp_path):
    with pytest.raises(ValueError, match="layer"):
        EncoderSettings(layer="penultimate")
    enc = HFVisionEncoder(EncoderSettings(model=str(towers["dinov2"]), device="cpu", layer=-9))
    with pytest.raises(NavcacheError, match="layer -9"):
        enc.load()
    from transformers import Siglip2VisionConfig

    Siglip2VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(NavcacheError, match="NaFlex"):
        HFVisionEncoder(EncoderSettings(model=str(tmp_path), device="cpu")).load()


@pytest.mark.slow
def test_fused_tower_through_frame_features(tmp_path):
    from navcache.cache_specs import open_cache
    from navcache.pipeline.config import load_config
    from navcache.pipeline.encoders.prismatic import PrismaticEncoder, PrismaticSettings
    from navcache.pipeline.encoders.tiny import make_random_prismatic
    from navcache.pipeline.runner import ExtractOptions, extract
    from tests.helpers import make_navila, write_project

    dino, siglip = make_random_prismatic(tmp_path / "models", image_size=S)
    data = make_navila(tmp_path / "data", n_episodes=2)
    fused = {"dino": str(dino), "siglip": str(siglip), "image_size": S, "device": "cpu"}
    cfg = write_project(tmp_path, data, dino, cache_root=str(tmp_path / "cache"), tower="prismatic", prismatic=fused, pool_grid=2,
                        store_patch_tokens=True)
    s = extract(load_config(cfg), ExtractOptions("train", only="frame-features"))
    assert not s.errors, s.errors
    c = open_cache(tmp_path / "cache/nav/train/frame_features")
    ep = c.episodes[0]
    rows = c[ep]
    assert rows["patch_tokens"].shape[1:] == (4, 4, 80) and rows["patch_pooled"].shape[1:] == (2, 2, 80) and rows["cls"].shape[1:] == (80,)
    assert c.manifest["provenance"]["encoder"]["random_init"] is True
    # the cached rows are the encoder's own output on the source's frames
    from navcache.pipeline.sources import make_source

    src = make_source("navila", data)
    e = next(e for e in src.episodes("train") if e.episode_id == ep)
    enc = PrismaticEncoder(PrismaticSettings(**fused))
    _, patches = enc.encode(enc.preprocess(src.read_frames(e).pixels))
    np.testing.assert_allclose(rows["patch_tokens"].astype(np.float32), patches.half().float().numpy(), atol=1e-3)
