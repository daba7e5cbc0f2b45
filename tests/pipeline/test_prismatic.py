"""The fused Prismatic (OpenVLA) tower: OpenVLA's resize-naive preprocessing per tower, second-to-last
layer patches of DINOv2-reg and SigLIP concatenated, and OpenVLA checkpoint tensors (timm names)
mapped onto the transformers classes, checked against a timm-semantics forward written here."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from navcache.pipeline.encoders.openvla_weights import PREFIXES, load_mapped, timm_to_transformers
from navcache.pipeline.encoders.prismatic import PrismaticEncoder, PrismaticSettings
from navcache.pipeline.encoders.tiny import make_random_prismatic
from navcache.pipeline.errors import NavcacheError

S = 56  # 4 x 4 patches of 14: tiny and fast; the real size is 224


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_random_prismatic(tmp_path_factory.mktemp("prismatic"), seed=0, image_size=S)


def _frames(n=3, h=37, w=61, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _enc(pair, **kw):
    return PrismaticEncoder(PrismaticSettings(dino=str(pair[0]), siglip=str(pair[1]), image_size=S, device="cpu", **kw))


def test_preprocessing_is_openvlas_resize_naive_per_tower(pair):
    frames = _frames()
    x = _enc(pair).preprocess(frames)
    assert x.shape == (3, 6, S, S) and x.dtype == torch.float32
    # independent: PIL bicubic squash of the whole frame (no crop), /255, per-tower mean/std
    resized = np.stack([np.asarray(Image.fromarray(f).resize((S, S), Image.BICUBIC)) for f in frames]).astype(np.float32) / 255
    dino = (resized - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    siglip = (resized - 0.5) / 0.5
    want = np.concatenate([dino, siglip], axis=-1).transpose(0, 3, 1, 2)
    assert float(np.abs(x.numpy() - want).max()) <= 1e-5


def test_preprocessing_equals_torchvision_when_installed(pair):
    tvf = pytest.importorskip("torchvision.transforms.functional")
    f = _frames(1)[0]
    img = Image.fromarray(f)
    want = [tvf.normalize(tvf.to_tensor(tvf.resize(img, (S, S), interpolation=tvf.InterpolationMode.BICUBIC)), m, s)
            for m, s in (((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5,) * 3, (0.5,) * 3))]
    assert torch.equal(_enc(pair).preprocess(f[None])[0], torch.cat(want))


def test_features_are_each_towers_second_to_last_layer_concatenated(pair):
    from transformers import Dinov2WithRegistersModel, SiglipVisionModel

    enc = _enc(pair)
    x = enc.preprocess(_frames())
    cls, patches = enc.encode(x)
    dino = Dinov2WithRegistersModel.from_pretrained(str(pair[0])).eval()
    siglip = SiglipVisionModel.from_pretrained(str(pair[1]), hidden_act="gelu").eval()  # OpenVLA's timm ran exact GELU
    with torch.no_grad():
        hd = dino(pixel_values=x[:, :3], output_hidden_states=True).hidden_states[-2]
        hs = siglip(pixel_values=x[:, 3:], output_hidden_states=True).hidden_states[-2]
    g = S // 14
    want = torch.cat([hd[:, 1 + 4 :], hs], dim=-1).reshape(3, g, g, 32 + 48)  # CLS + 4 registers dropped
    assert patches.shape == (3, g, g, 80) and enc.hidden_size() == 80
    torch.testing.assert_close(patches, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cls, torch.cat([hd[:, 0], hs.mean(1)], dim=-1), rtol=1e-5, atol=1e-5)
    # the activation override is real: SigLIP's own tanh GELU gives other features
    tanh = _enc(pair, siglip_hidden_act=None).encode(x)[1]
    assert not torch.allclose(tanh[..., 32:], patches[..., 32:], atol=1e-6)
    torch.testing.assert_close(tanh[..., :32], patches[..., :32])


def test_identity_covers_both_towers_and_provenance_says_random(pair, tmp_path):
    import shutil

    enc = _enc(pair)
    ident = enc.identity()
    assert enc.provenance()["random_init"] is True and enc.random_init
    assert ident["layer"] == -2 and ident["resize"] == "resize-naive"
    # another SigLIP weights file (same config) -> another fingerprint
    other = tmp_path / "siglip2"
    shutil.copytree(pair[1], other)
    from safetensors.torch import load_file, save_file

    sd = load_file(str(other / "model.safetensors"))
    k = sorted(sd)[0]
    sd[k] = sd[k] + 1
    save_file(sd, str(other / "model.safetensors"), metadata={"format": "pt"})
    changed = PrismaticEncoder(PrismaticSettings(dino=str(pair[0]), siglip=str(other), image_size=S, device="cpu"))
    assert changed.weights_fingerprint() != enc.weights_fingerprint()


def test_settings_name_the_field():
    with pytest.raises(ValueError, match="resize.*resize-naive"):
        PrismaticSettings(resize="letterbox")
    with pytest.raises(ValueError, match="layer"):
        PrismaticSettings(layer="last")


# -- OpenVLA checkpoints ------------------------------------------------------------------------
def _to_timm(tower: str, sd: dict) -> dict:
    """Inverse of the mapping, written independently from timm's VisionTransformer names."""
    out, blocks = {}, {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] == "encoder":
            blocks.setdefault(int(parts[2]), {})[".".join(parts[3:])] = v
    for i, b in blocks.items():
        if tower == "dino":
            names = {"norm1": "norm1", "norm2": "norm2", "attention.o_proj": "attn.proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
            qkv = "attention.{}_proj"
            out[f"blocks.{i}.ls1.scale_factor"] = b["layer_scale1.lambda1"]  # OpenVLA's HF export name for gamma
            out[f"blocks.{i}.ls2.scale_factor"] = b["layer_scale2.lambda1"]
        else:
            names = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.out_proj": "attn.proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
            qkv = "self_attn.{}_proj"
        for hf, tm in names.items():
            for kind in ("weight", "bias"):
                out[f"blocks.{i}.{tm}.{kind}"] = b[f"{hf}.{kind}"]
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([b[qkv.format(p) + f".{kind}"] for p in "qkv"])
    if tower == "dino":
        out.update({"cls_token": sd["embeddings.cls_token"], "reg_token": sd["embeddings.register_tokens"],
                    "pos_embed": sd["embeddings.position_embeddings"][:, 1:],  # timm: patches only
                    "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
                    "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
                    "norm.weight": sd["layernorm.weight"], "norm.bias": sd["layernorm.bias"]})
    else:
        d = sd["embeddings.patch_embedding.weight"].shape[0]
        out.update({"pos_embed": sd["embeddings.position_embedding.weight"][None],
                    "patch_embed.proj.weight": sd["embeddings.patch_embedding.weight"], "patch_embed.proj.bias": sd["embeddings.patch_embedding.bias"],
                    "norm.weight": sd["post_layernorm.weight"], "norm.bias": sd["post_layernorm.bias"],
                    # the MAP head Prismatic never runs (timm AttentionPoolLatent)
                    "attn_pool.latent": torch.randn(1, 1, d), "attn_pool.q.weight": torch.randn(d, d), "attn_pool.kv.weight": torch.randn(2 * d, d),
                    "attn_pool.proj.weight": torch.randn(d, d), "attn_pool.norm.weight": torch.ones(d), "attn_pool.mlp.fc1.weight": torch.randn(8, d)})
    return {k: v.clone().contiguous() for k, v in out.items()}


def _timm_forward(sd: dict, x: torch.Tensor, heads: int, prefix: int, depth_read: int) -> torch.Tensor:
    """timm VisionTransformer.get_intermediate_layers(n={depth_read}) on timm-named tensors, exact
    GELU (timm 0.9.10's default), prefix tokens dropped: the reference the mapping must reproduce."""
    F = torch.nn.functional
    p = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=sd["patch_embed.proj.weight"].shape[-1])
    h = p.flatten(2).transpose(1, 2) + sd["pos_embed"]  # no_embed_class: positions on patches only
    pre = [sd[k].expand(len(x), -1, -1) for k in ("cls_token", "reg_token") if k in sd]
    h = torch.cat([*pre, h], dim=1)
    d = h.shape[-1]
    for i in range(depth_read + 1):
        b = lambda n: sd[f"blocks.{i}.{n}"]  # noqa: E731
        y = F.layer_norm(h, (d,), b("norm1.weight"), b("norm1.bias"), 1e-6)
        q, k, v = F.linear(y, b("attn.qkv.weight"), b("attn.qkv.bias")).reshape(len(x), -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(len(x), -1, d)
        a = F.linear(a, b("attn.proj.weight"), b("attn.proj.bias"))
        h = h + (a * b("ls1.scale_factor") if f"blocks.{i}.ls1.scale_factor" in sd else a)
        y = F.layer_norm(h, (d,), b("norm2.weight"), b("norm2.bias"), 1e-6)
        y = F.linear(F.gelu(F.linear(y, b("mlp.fc1.weight"), b("mlp.fc1.bias"))), b("mlp.fc2.weight"), b("mlp.fc2.bias"))
        h = h + (y * b("ls2.scale_factor") if f"blocks.{i}.ls2.scale_factor" in sd else y)
    return h[:, prefix:]


@pytest.fixture(scope="module")
def openvla_folder(tmp_path_factory, pair):
    """An OpenVLA-layout checkpoint: timm-named tower tensors in two safetensors shards with an
    index, beside a language-model tensor, built from perturbed tiny towers (LayerScale, CLS,
    registers non-trivial so that a mis-mapping shows)."""
    from safetensors.torch import save_file
    from transformers import Dinov2WithRegistersModel, SiglipVisionModel

    folder = tmp_path_factory.mktemp("openvla")
    g = torch.Generator().manual_seed(1)
    towers = {}
    for tower, cls, path in (("dino", Dinov2WithRegistersModel, pair[0]), ("siglip", SiglipVisionModel, pair[1])):
        sd = cls.from_pretrained(str(path)).state_dict()
        sd = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in sd.items() if not k.startswith("head.")}
        towers[tower] = _to_timm(tower, sd)
    shard1 = {PREFIXES["dino"] + k: v for k, v in towers["dino"].items()}
    shard2 = {PREFIXES["siglip"] + k: v for k, v in towers["siglip"].items()}
    shard2["language_model.model.embed_tokens.weight"] = torch.zeros(4, 4)
    save_file(shard1, str(folder / "model-00001-of-00002.safetensors"))
    save_file(shard2, str(folder / "model-00002-of-00002.safetensors"))
    wm = {**{k: "model-00001-of-00002.safetensors" for k in shard1}, **{k: "model-00002-of-00002.safetensors" for k in shard2}}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    (folder / "navcache_provenance.json").write_text(json.dumps({"random_init": True}))
    return folder, towers


def test_openvla_checkpoint_features_match_the_timm_forward(pair, openvla_folder):
    folder, towers = openvla_folder
    enc = _enc(pair, openvla_checkpoint=str(folder))
    x = enc.preprocess(_frames())
    cls, patches = enc.encode(x)
    g = S // 14
    with torch.no_grad():
        d = _timm_forward(towers["dino"], x[:, :3], heads=2, prefix=5, depth_read=1)  # 3 blocks: read block 1
        s = _timm_forward(towers["siglip"], x[:, 3:], heads=2, prefix=0, depth_read=1)
    torch.testing.assert_close(patches, torch.cat([d, s], -1).reshape(3, g, g, 80), rtol=1e-4, atol=1e-4)
    assert enc.random_init and enc.provenance()["openvla_checkpoint"]["path"] == str(folder)
    assert enc.identity()["weights"] != _enc(pair).identity()["weights"]


@pytest.mark.parametrize("tower", ["dino", "siglip"])
def test_the_mapping_places_every_tensor(pair, openvla_folder, tower):
    from transformers import Dinov2WithRegistersModel, SiglipVisionConfig, SiglipVisionModel

    timm_sd = openvla_folder[1][tower]
    if tower == "dino":
        model = Dinov2WithRegistersModel.from_pretrained(str(pair[0]))
    else:
        model = SiglipVisionModel(SiglipVisionConfig.from_pretrained(str(pair[1]), vision_use_head=False))
    keys = set(model.state_dict())
    mapped = timm_to_transformers(tower, timm_sd, keys)
    assert set(mapped) == keys  # nothing missing, nothing extra
    load_mapped(model, tower, timm_sd)
    missing = dict(timm_sd)
    dropped = sorted(k for k in missing if k.startswith("blocks.0.attn.qkv"))[0]
    del missing[dropped]
    with pytest.raises(NavcacheError, match=r"not in the checkpoint"):
        timm_to_transformers(tower, missing, keys)
    with pytest.raises(NavcacheError, match=r"no place.*blocks\.0\.weird"):
        timm_to_transformers(tower, {**timm_sd, "blocks.0.weird.weight": torch.zeros(1)}, keys)


def test_a_folder_without_the_towers_is_refused_by_field(pair, tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"language_model.x": "a.safetensors"}}))
    with pytest.raises(NavcacheError, match=r"stages\.frame-features\.prismatic\.openvla_checkpoint.*vision_backbone\.featurizer"):
        _enc(pair, openvla_checkpoint=str(tmp_path)).check("stages.frame-features.prismatic")
