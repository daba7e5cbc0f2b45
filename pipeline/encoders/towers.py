"""Single transformers vision towers: which class loads them, their token layout, which layer is read.

One checkpoint family differs from the next in three ways that decide what a frame's features are:

- **class**: dual-encoder checkpoints (CLIP, SigLIP, fixed-resolution SigLIP2, which transformers
  stores as ``siglip``) load through their vision class (``CLIPVisionModel``,
  ``SiglipVisionModel``), which reads the ``vision_model.*`` tensors of the full checkpoint;
  ``AutoModel`` would build the text tower too and want ``input_ids``.
- **token layout** of the sequence [N, T, D]: DINOv2 / DINOv3 / CLIP put a CLS token first, then
  ``num_register_tokens`` registers (DINOv2-with-registers, DINOv3), then the patch grid row-major;
  SigLIP has no CLS and no registers (every token is a patch).
- **layer**: ``"last"`` is ``last_hidden_state`` (after the model's final norm, where it has one;
  CLIP's post-norm applies to its pooled output only); an integer ``k`` is ``hidden_states[k]``
  (0 = the embeddings, i = the output of block i, so -1 = the last block before the final norm
  and -2 = the second-to-last block, the layer Prismatic/OpenVLA reads through timm's
  ``get_intermediate_layers(n={depth - 2})``). Blocks after the one read are dropped at load
  time: they cannot change the output, and the second-to-last layer of ViT-L saves 1/24 of it.

For towers without a CLS token the ``cls`` row of ``frame_features`` is the mean of the patch
tokens at the same layer (documented in the README table), so every tower fills the same spec.

NaFlex SigLIP2 (``siglip2``: variable resolution, patch sequences with masks) is refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import NavcacheError

#: config ``model_type`` -> (transformers vision class, has a CLS token)
VISION_TOWERS: dict[str, tuple[str, bool]] = {
    "dinov2": ("Dinov2Model", True),
    "dinov2_with_registers": ("Dinov2WithRegistersModel", True),
    "dinov3_vit": ("DINOv3ViTModel", True),
    "clip": ("CLIPVisionModel", True),
    "clip_vision_model": ("CLIPVisionModel", True),
    "siglip": ("SiglipVisionModel", False),
    "siglip_vision_model": ("SiglipVisionModel", False),
}
REFUSED = {"siglip2": "NaFlex SigLIP2 works on variable-resolution patch sequences; use a fixed-resolution SigLIP2 checkpoint",
           "siglip2_vision_model": "NaFlex SigLIP2 works on variable-resolution patch sequences; use a fixed-resolution SigLIP2 checkpoint"}


def check_layer(value: object, field: str = "layer") -> None:
    """ValueError naming ``field`` unless ``value`` is "last" or an int (an index into hidden_states)."""
    if value != "last" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{field} must be 'last' or an integer index into hidden_states (-2 = second-to-last block), got {value!r}")


@dataclass(frozen=True)
class TokenLayout:
    """Where the patch grid starts in a tower's token sequence."""

    has_cls: bool
    registers: int

    @property
    def prefix(self) -> int:
        return int(self.has_cls) + self.registers

    def split(self, h, hp: int, wp: int):
        """h [N, T, D] -> (cls [N, D], patches [N, hp, wp, D]); cls = mean of patches when there is no CLS token."""
        patches = h[:, self.prefix :]
        if patches.shape[1] != hp * wp:
            raise NavcacheError(f"tower gave {patches.shape[1]} patch tokens after {self.prefix} prefix tokens, expected {hp}x{wp}")
        cls = h[:, 0] if self.has_cls else patches.mean(dim=1)
        return cls, patches.reshape(h.shape[0], hp, wp, h.shape[-1])


def vision_config(cfg: Any) -> Any:
    """The vision part of a (possibly dual-encoder) config."""
    return getattr(cfg, "vision_config", None) or cfg


def tower_class(cfg: Any, model: str) -> tuple[str | None, bool]:
    """(transformers class name or None for ``AutoModel``, has CLS) for a loaded ``AutoConfig``."""
    mt = getattr(cfg, "model_type", "")
    if mt in REFUSED:
        raise NavcacheError(f"encoder {model!r}: model_type {mt!r} is not supported: {REFUSED[mt]}")
    if mt in VISION_TOWERS:
        return VISION_TOWERS[mt]
    return None, True  # remote code or a new ViT: CLS first, as DINO-style models


def layout(cfg: Any, has_cls: bool) -> TokenLayout:
    return TokenLayout(has_cls, int(getattr(vision_config(cfg), "num_register_tokens", 0) or 0))


def load_tower(model: str, revision: str | None, trust_remote_code: bool = False, config_overrides: dict | None = None):
    """The vision tower of ``model`` (hub id or folder) through its transformers class, on CPU."""
    import transformers
    from transformers import AutoConfig, AutoModel

    transformers.utils.logging.disable_progress_bar()
    cfg = AutoConfig.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code)
    name, _ = tower_class(cfg, model)
    cls = getattr(transformers, name) if name else AutoModel
    kw: dict[str, Any] = dict(revision=revision, trust_remote_code=trust_remote_code, use_safetensors=None)
    if config_overrides:
        vcfg = vision_config(cfg)
        for k, v in config_overrides.items():
            setattr(vcfg, k, v)
        kw["config"] = vcfg if name else cfg
    # use_safetensors=None: safetensors when present, else torch.load(weights_only=True) (see hf_vision).
    # The load report lists the text tower / pool head a vision class leaves out (expected, kept
    # quiet); a tensor the tower lacks would leave it half random, so that is an error.
    level = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    try:
        tower, info = cls.from_pretrained(model, output_loading_info=True, **kw)
    finally:
        transformers.utils.logging.set_verbosity(level)
    if info.get("missing_keys"):
        raise NavcacheError(f"encoder {model!r}: the checkpoint lacks tensors of {type(tower).__name__}: {sorted(info['missing_keys'])[:8]}")
    return tower


def block_list(model):
    """The ``nn.ModuleList`` of transformer blocks (length ``num_hidden_layers``)."""
    import torch

    n = int(vision_config(model.config).num_hidden_layers)
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    if len(lists) != 1:
        raise NavcacheError(f"{type(model).__name__}: cannot find its single list of {n} blocks to read an inner layer")
    return lists[0]


def truncate_for_layer(model, layer: int | str) -> None:
    """Drop the blocks after the one ``layer`` reads (in place): ``hidden_states[-1]`` then is ``hidden_states[layer]``."""
    if layer == "last":
        return
    blocks = block_list(model)
    n = len(blocks)
    keep = layer if layer >= 0 else n + 1 + layer  # hidden_states has n + 1 entries
    if not 1 <= keep <= n:
        raise NavcacheError(f"layer {layer} is outside hidden_states of a {n}-block tower (valid: 1..{n} or -{n}..-1)")
    del blocks[keep:]


def run_tower(model, x, layer: int | str):
    """pixel_values [N, 3, H, W] -> hidden sequence [N, T, D] at ``layer`` (model already truncated)."""
    if layer == "last":
        return model(pixel_values=x).last_hidden_state
    return model(pixel_values=x, output_hidden_states=True).hidden_states[-1]
