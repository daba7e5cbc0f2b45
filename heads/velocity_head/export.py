"""``export/``: the best checkpoint's weights as ``model.safetensors`` + ``config.json`` + ``dataset_statistics.json``.

    from navcache.heads.velocity_head import load_export
    model, md = load_export("runs/velocity_head/export")     # eval mode
    out = model(patches, goal_n)   # patches [B, P, D]; goal_n = (goal - goal_mean) / goal_std (config.json "reference")
    v = unnormalise(md["reference"], out["action"])          # raw (v_x, v_y)

``dataset_statistics.json`` is OpenVLA's file of the TRAIN split's velocity cache (``heads.exports.
openvla_stats``): the q01/q99 the head's targets were normalised with, and what OpenVLA's
``predict_action(..., unnorm_key=...)`` reads. Files are read with safetensors and json only. The
folder is written beside ``export/`` and renamed into place.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from navcache.cache_specs.layout import fsync_dir, fsync_tree, private_name, sweep_stale_temporaries
from navcache.heads.exports.openvla_stats import openvla_statistics

from .model import VelocityHead

MODEL_FILE, CONFIG_FILE, STATS_FILE = "model.safetensors", "config.json", "dataset_statistics.json"
MODEL_TYPE = "navcache-velocity-head"


def export_head(model: VelocityHead, out_dir: str | Path, metadata: dict, train_cache: Path, best_epoch: int | None = None) -> Path:
    """Write ``out_dir`` from the model (holding the best weights) and the run's checkpoint metadata."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(out.parent, f".{out.name}.tmp")
    tmp = out.parent / private_name(".", f"{out.name}.tmp")
    tmp.mkdir()
    config = {"model_type": MODEL_TYPE, "class": "navcache.heads.velocity_head.VelocityHead", "model": model.config,
              "reference": metadata["reference"], "features": metadata["kind"], "dt": metadata.get("dt"),
              "vocab_size": metadata["config"]["vocab_size"], "config": metadata["config"],
              "inputs": {"patches": "f32 [B, P, D]", "goal_n": "f32 [B, 2]: (goal pixel - goal_mean) / goal_std"},
              "output": "action [B, 2] q99-normalised (unnormalise with dataset_statistics.json); chunk [B, H, 2]; token_logits [B, 2, 256]",
              "source": {"train_cache": str(train_cache), "best_epoch": best_epoch}}
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / MODEL_FILE), metadata={"format": "pt", "model_type": MODEL_TYPE})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / STATS_FILE).write_text(json.dumps(openvla_statistics(train_cache), indent=2))
        fsync_tree(tmp)
        aside = out.parent / private_name(".", f"{out.name}.old") if out.exists() else None
        if aside is not None:
            os.replace(out, aside)
        os.replace(tmp, out)
        fsync_dir(out.parent)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_metadata(path: str | Path) -> tuple[dict, dict]:
    """(config.json, metadata shaped like a checkpoint's: "reference", "kind", "config", "D", "P", "H", "checkpoint")."""
    path = Path(path)
    for name in (CONFIG_FILE, MODEL_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not a complete velocity-head export: {name} is missing")
    try:
        cfg = json.loads((path / CONFIG_FILE).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path / CONFIG_FILE} is not valid JSON ({e}): export the run again") from None
    if not isinstance(cfg, dict) or cfg.get("model_type") != MODEL_TYPE:
        raise ValueError(f"{path / CONFIG_FILE} is not a velocity-head export (model_type = {cfg.get('model_type') if isinstance(cfg, dict) else cfg!r})")
    md = {"head": "velocity-head", "reference": cfg["reference"], "kind": cfg["features"], "config": cfg["config"],
          **{k: cfg["model"][k] for k in ("D", "P", "H")}, "checkpoint": {"path": str(path), "epoch": cfg["source"]["best_epoch"], "val": None}}
    return cfg, md


def load_export(path: str | Path, device: str | torch.device = "cpu") -> tuple[VelocityHead, dict]:
    """(model in eval mode, metadata shaped like a checkpoint's: "reference", "kind", "config", ...)."""
    from safetensors.torch import load_file

    cfg, md = export_metadata(path)
    with torch.random.fork_rng(devices=[]):
        model = VelocityHead(**cfg["model"])
    model.load_state_dict(load_file(str(Path(path) / MODEL_FILE), device="cpu"))
    return model.to(device).eval(), md
