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
    sweep_stale_temporaries(out.parent, TMP_PREFIX + out.name)  # what makers killed mid-save left
    tmp = out.parent / private_name(TMP_PREFIX, out.name)
    model.save_pretrained(tmp)
    proc = dict(DINOV3_PROCESSOR, size={"height": image_size, "width": image_size})
    (tmp / "preprocessor_config.json").write_text(json.dumps(proc, indent=1))
    (tmp / PROVENANCE_FILE).write_text(json.dumps({"random_init": True, "seed": seed, "size": size, "note": "tiny seeded random-initialised DINOv3ViTModel made by navcache; NOT pretrained weights"}, indent=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # a concurrent maker won; its files are identical
    return out
