"""Tiny, seeded, random-initialised models of the real architectures (no weights can be downloaded).

They are saved with ``save_pretrained`` and loaded back through the same ``from_pretrained`` code
path as real checkpoints. A ``navcache_provenance.json`` beside the weights records that they are
random, and every cache built from them says so in its manifest.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from navcache.cache_specs.layout import TMP_PREFIX, private_name, sweep_stale_temporaries

from .weights import PROVENANCE_FILE

DINOV3_PROCESSOR = {
    "image_processor_type": "DINOv3ViTImageProcessor",
    "do_resize": True,
    "size": {"height": 224, "width": 224},
    "resample": 2,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}

#: architecture presets of DINOv3ViTConfig; "vits16"/"vitl16" match the released sizes
DINOV3_SIZES = {
    "tiny": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3),
    "vits16": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6),
    "vitb16": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    "vitl16": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
    # ViT-L's width (so its outputs are ViT-L-sized) on one thin layer: for benches whose forward
    # is a stand-in, where only the outputs' size matters (25 MB of weights instead of 1.2 GB)
    "vitl16-width": dict(hidden_size=1024, intermediate_size=1024, num_hidden_layers=1, num_attention_heads=16),
}


def make_random_dinov3(out: Path, size: str = "tiny", seed: int = 0, image_size: int = 224) -> Path:
    """Save a seeded random-init ``DINOv3ViTModel`` (4 register tokens, patch 16) at ``out``; idempotent."""
    out = Path(out)
    if (out / PROVENANCE_FILE).exists():
        return out
    import torch
    import transformers
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    transformers.utils.logging.disable_progress_bar()

    cfg = DINOv3ViTConfig(**DINOV3_SIZES[size], patch_size=16, num_register_tokens=4, image_size=image_size)
    torch.manual_seed(seed)
    model = DINOv3ViTModel(cfg).eval()
    proc = dict(DINOV3_PROCESSOR, size={"height": image_size, "width": image_size})
    note = "tiny seeded random-initialised DINOv3ViTModel made by navcache; NOT pretrained weights"
    return _save_atomically(out, model, proc, {"random_init": True, "seed": seed, "size": size, "note": note})


def _save_atomically(out: Path, model, processor: dict, provenance: dict) -> Path:
    """save_pretrained + preprocessor_config.json + provenance under a temporary name, then one rename."""
    sweep_stale_temporaries(out.parent, TMP_PREFIX + out.name)  # what makers killed mid-save left
    tmp = out.parent / private_name(TMP_PREFIX, out.name)
    model.save_pretrained(tmp)
    (tmp / "preprocessor_config.json").write_text(json.dumps(processor, indent=1))
    (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # a concurrent maker won; its files are identical
    return out


IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
#: the published preprocessor_config.json values of each family (facebook/dinov2*, google/siglip-*, openai/clip-*)
TOWER_PROCESSORS = {
    "dinov2": {"image_processor_type": "BitImageProcessor", "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
               "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True, **IMAGENET, "resample": 3,
               "rescale_factor": 1 / 255, "size": {"shortest_edge": 256}},
    "siglip": {"image_processor_type": "SiglipImageProcessor", "do_normalize": True, "do_rescale": True, "do_resize": True,
               "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 3, "rescale_factor": 1 / 255, "size": {"height": 224, "width": 224}},
    "clip": {"image_processor_type": "CLIPImageProcessor", "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
             "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
             "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
             "resample": 3, "rescale_factor": 1 / 255, "size": {"shortest_edge": 224}},
}
TOWER_ARCHS = ("dinov2", "dinov2-reg", "siglip", "siglip-dual", "clip", "clip-dual")
#: tiny widths; the fused demo tower keeps the real pair's distinct widths (DINO narrower than SigLIP)
TINY_TOWER = dict(intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, patch_size=14)


def make_random_tower(out: Path, arch: str, seed: int = 0, image_size: int = 224, hidden_size: int = 32, layers: int = 3,
                      registers: int = 4, **config) -> Path:
    """Save a seeded random-init vision tower of ``arch`` (``TOWER_ARCHS``; "-dual": the full
    CLIP/SigLIP model with its text tower, as the hub checkpoints are) with its family's
    preprocessor config at ``image_size``; idempotent. ``config``: further config fields."""
    out = Path(out)
    if (out / PROVENANCE_FILE).exists():
        return out
    if arch not in TOWER_ARCHS:
        raise ValueError(f"arch must be one of {', '.join(TOWER_ARCHS)}, got {arch!r}")
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    kw = dict(TINY_TOWER, hidden_size=hidden_size, num_hidden_layers=layers, image_size=image_size, **config)
    family = arch.split("-")[0]
    if arch == "dinov2":
        model_cls, cfg = transformers.Dinov2Model, transformers.Dinov2Config(**kw)
    elif arch == "dinov2-reg":
        model_cls, cfg = transformers.Dinov2WithRegistersModel, transformers.Dinov2WithRegistersConfig(**kw, num_register_tokens=registers)
    elif arch in ("siglip", "clip"):
        name = "Siglip" if arch == "siglip" else "CLIP"
        model_cls, cfg = getattr(transformers, f"{name}VisionModel"), getattr(transformers, f"{name}VisionConfig")(**kw)
    else:
        name = "Siglip" if family == "siglip" else "CLIP"
        text = dict(hidden_size=hidden_size, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99)
        model_cls = getattr(transformers, f"{name}Model")
        cfg = getattr(transformers, f"{name}Config")(text_config=text, vision_config=kw)
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    proc = dict(TOWER_PROCESSORS[family])
    if "crop_size" in proc:
        proc.update(crop_size={"height": image_size, "width": image_size}, size={"shortest_edge": image_size * 8 // 7 if family == "dinov2" else image_size})
    else:
        proc["size"] = {"height": image_size, "width": image_size}
    note = f"tiny seeded random-initialised {type(model).__name__} made by navcache; NOT pretrained weights"
    return _save_atomically(out, model, proc, {"random_init": True, "seed": seed, "arch": arch, "note": note})


def make_random_prismatic(root: Path, seed: int = 0, image_size: int = 224) -> tuple[Path, Path]:
    """A tiny seeded random-init pair of the fused Prismatic tower's classes (DINOv2 with 4 registers
    and SigLIP, patch 14, widths 32 and 48), saved under ``root``; returns (dino, siglip) folders."""
    root = Path(root)
    dino = make_random_tower(root / "dinov2-reg-tiny", "dinov2-reg", seed=seed, image_size=image_size, hidden_size=32)
    siglip = make_random_tower(root / "siglip-tiny", "siglip", seed=seed + 1, image_size=image_size, hidden_size=48)
    return dino, siglip
