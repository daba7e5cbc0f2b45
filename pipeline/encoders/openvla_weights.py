"""OpenVLA's fine-tuned vision towers, read from its checkpoint folder onto transformers classes.

OpenVLA (``PrismaticForConditionalGeneration``) stores its towers as timm ``VisionTransformer``
tensors inside its safetensors shards:

- ``vision_backbone.featurizer.*``: DINOv2 ViT-L/14 with 4 registers
  (``vit_large_patch14_reg4_dinov2``: ``cls_token``, ``reg_token``, ``pos_embed`` over patches
  only (``no_embed_class``), ``blocks.i.{norm1, attn.qkv, attn.proj, ls1, norm2, mlp.fc1, mlp.fc2,
  ls2}``, ``norm``). OpenVLA's HF export renames LayerScale's ``gamma`` to ``scale_factor``
  (transformers used to rewrite names containing "gamma"); raw timm names are accepted too.
- ``vision_backbone.fused_featurizer.*``: SigLIP so400m/14 (``vit_so400m_patch14_siglip_224``:
  no CLS, no registers, ``pos_embed`` [1, 256, D], the same block names without LayerScale,
  ``norm``, and an attention-pool head ``attn_pool.*`` that Prismatic never runs).

``timm_to_transformers`` maps them onto ``Dinov2WithRegistersModel`` / ``SiglipVisionModel``
(built with ``vision_use_head=False``) state dicts: qkv rows split into q, k, v (timm's qkv Linear
is [3D, D] ordered q, k, v); the DINO position table gains a zero CLS row (timm adds no position
to CLS; transformers adds row 0, so zero is the same sum) and SigLIP's loses its batch axis.
Tensors with no counterpart are named in ``UNUSED`` (SigLIP's pool head) or ``FILLED``
(transformers' DINO ``mask_token``, read only with ``bool_masked_pos``, set to zeros); anything
else left over or missing is an error naming the tensors, so a checkpoint of another layout can
never load half-mapped.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping

from ..errors import NavcacheError

PREFIXES = {"dino": "vision_backbone.featurizer.", "siglip": "vision_backbone.fused_featurizer."}
#: timm tensors of each tower that Prismatic's forward never reads
UNUSED = {"dino": (), "siglip": ("attn_pool.",)}
#: transformers tensors with no timm counterpart, and the value that reproduces timm's forward
FILLED = {"dino": ("embeddings.mask_token",), "siglip": ()}

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
#: timm block tensor (without weight/bias) -> transformers name per tower ("{i}" = block index)
_BLOCK_NAMES = {
    "dino": {"norm1": "encoder.layer.{i}.norm1", "attn.proj": "encoder.layer.{i}.attention.o_proj", "norm2": "encoder.layer.{i}.norm2",
             "mlp.fc1": "encoder.layer.{i}.mlp.fc1", "mlp.fc2": "encoder.layer.{i}.mlp.fc2"},
    "siglip": {"norm1": "encoder.layers.{i}.layer_norm1", "attn.proj": "encoder.layers.{i}.self_attn.out_proj",
               "norm2": "encoder.layers.{i}.layer_norm2", "mlp.fc1": "encoder.layers.{i}.mlp.fc1", "mlp.fc2": "encoder.layers.{i}.mlp.fc2"},
}
_QKV = {"dino": "encoder.layer.{i}.attention.{p}_proj", "siglip": "encoder.layers.{i}.self_attn.{p}_proj"}
_LAYER_SCALE = {"ls1": "encoder.layer.{i}.layer_scale1.lambda1", "ls2": "encoder.layer.{i}.layer_scale2.lambda1"}
_TOP = {
    "dino": {"cls_token": "embeddings.cls_token", "reg_token": "embeddings.register_tokens",
             "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
             "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias", "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"},
    "siglip": {"patch_embed.proj.weight": "embeddings.patch_embedding.weight", "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
               "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"},
}


def timm_to_transformers(tower: str, timm_sd: Mapping[str, "object"], target_keys) -> dict:
    """timm tensors of one tower (names without the checkpoint prefix) -> a complete state dict
    for the transformers model whose ``state_dict()`` keys are ``target_keys``.

    Raises NavcacheError listing timm tensors it cannot place and target tensors left unfilled."""
    import torch

    out: dict[str, torch.Tensor] = {}
    leftover = []
    for name, t in timm_sd.items():
        if any(name.startswith(u) for u in UNUSED[tower]):
            continue
        placed = _place(tower, name, t)
        if placed is None:
            leftover.append(name)
        out.update(placed or {})
    targets = set(target_keys)
    for name in FILLED[tower]:
        if name in targets and name not in out:
            out[name] = None  # shape known only from the model: filled by load_mapped
    unexpected = sorted(set(out) - targets)
    missing = sorted(targets - set(out))
    if leftover or unexpected or missing:
        raise NavcacheError(f"OpenVLA {tower} tower: checkpoint tensors with no place {leftover[:8]}, mapped names the model lacks "
                            f"{unexpected[:8]}, model tensors not in the checkpoint {missing[:8]}")
    return out


def _place(tower: str, name: str, t) -> dict | None:
    """{transformers name: tensor} for one timm tensor, or None when the name is unknown."""
    import torch

    if name in _TOP[tower]:
        return {_TOP[tower][name]: t}
    if name == "pos_embed":
        if tower == "siglip":
            return {"embeddings.position_embedding.weight": t[0]}
        return {"embeddings.position_embeddings": torch.cat([torch.zeros_like(t[:, :1]), t], dim=1)}
    m = _BLOCK.match(name)
    if m is None:
        return None
    i, rest = m.group(1), m.group(2)
    part, _, kind = rest.rpartition(".")
    if part == "attn.qkv" and kind in ("weight", "bias"):
        q, k, v = t.chunk(3, dim=0)
        return {f"{_QKV[tower].format(i=i, p=p)}.{kind}": x for p, x in zip("qkv", (q, k, v))}
    if tower == "dino" and part in _LAYER_SCALE and kind in ("gamma", "scale_factor"):
        return {_LAYER_SCALE[part].format(i=i): t}
    if part in _BLOCK_NAMES[tower] and kind in ("weight", "bias"):
        return {f"{_BLOCK_NAMES[tower][part].format(i=i)}.{kind}": t}
    return None


def load_mapped(model, tower: str, timm_sd: Mapping) -> None:
    """Fill ``model`` (a transformers tower) from timm tensors, every tensor accounted for (strict)."""
    import torch

    target = model.state_dict()
    sd = timm_to_transformers(tower, timm_sd, target.keys())
    for k, v in sd.items():
        if v is None:
            sd[k] = torch.zeros_like(target[k])
        elif tuple(v.shape) != tuple(target[k].shape):
            raise NavcacheError(f"OpenVLA {tower} tower: {k} has shape {tuple(v.shape)} in the checkpoint, the model wants {tuple(target[k].shape)}")
    model.load_state_dict(sd, strict=True)


def vision_shards(folder: Path) -> dict[str, list[str]]:
    """{shard file name: [tensor names under the vision prefixes]} of an OpenVLA checkpoint folder."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
    else:
        from safetensors import safe_open

        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise NavcacheError(f"{folder}: no model.safetensors.index.json and no *.safetensors: not an OpenVLA checkpoint folder")
        weight_map = {}
        for f in files:
            with safe_open(str(f), "pt") as st:
                weight_map.update({k: f.name for k in st.keys()})
    shards: dict[str, list[str]] = {}
    for k, f in weight_map.items():
        if k.startswith(tuple(PREFIXES.values())):
            shards.setdefault(f, []).append(k)
    if not any(k.startswith(PREFIXES["dino"]) for ks in shards.values() for k in ks):
        raise NavcacheError(f"{folder}: no {PREFIXES['dino']}* tensors: not an OpenVLA (Prismatic) checkpoint")
    return shards


def read_towers(folder: Path) -> dict[str, dict]:
    """{"dino": {timm name: tensor}, "siglip": {...}} read from the shards that hold them (the
    language model's tensors are never read)."""
    from safetensors import safe_open

    towers: dict[str, dict] = {"dino": {}, "siglip": {}}
    for shard, keys in vision_shards(folder).items():
        with safe_open(str(Path(folder) / shard), "pt") as st:
            for k in keys:
                # fused first: "vision_backbone.featurizer." is not a prefix of it, but be explicit
                tower = "siglip" if k.startswith(PREFIXES["siglip"]) else "dino"
                towers[tower][k[len(PREFIXES[tower]) :]] = st.get_tensor(k)
    if not towers["siglip"]:
        raise NavcacheError(f"{folder}: no {PREFIXES['siglip']}* tensors: a single-tower Prismatic checkpoint, not the fused DINOv2+SigLIP one")
    return towers
