"""``export/``: the best checkpoint's connector + expert as ``model.safetensors`` + ``config.json`` +
openpi's ``norm_stats.json``; ``FlowExpertPolicy`` loads it and samples unnormalised chunks.

    from navcache.heads.flow_expert import FlowExpertPolicy
    policy = FlowExpertPolicy.from_pretrained("runs/flow_expert/export")
    chunks = policy.sample_actions(features, state)   # [B, T, D] cached tokens, [B, S] raw -> [B, H, A] raw

Read with safetensors and json only: nothing is unpickled. Written beside ``export/`` and renamed
into place, so a crash never leaves half an export.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from navcache.cache_specs.layout import fsync_tree, private_name
from navcache.heads.checkpoint import load_trainable

from .configuration import FlowExpertConfig
from .data import Normaliser, pad_dims
from .train import build_model, sample_normalised

MODEL_FILE, CONFIG_FILE, NORM_FILE = "model.safetensors", "config.json", "norm_stats.json"
MODEL_TYPE = "navcache-flow-expert"


def read_checkpoint(path: str | Path) -> dict:
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def model_from_checkpoint(ckpt: dict):
    """(FlowExpert with the checkpoint's best weights, FlowExpertConfig, metadata)."""
    md = ckpt["metadata"]
    cfg = FlowExpertConfig.from_dict(md["config"])
    with torch.random.fork_rng(devices=[]):  # init draws are overwritten: leave the caller's RNG alone
        model = build_model(cfg, int(md["context_dim"]))
    load_trainable(model, ckpt)
    return model.eval(), cfg, md


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> Path:
    from safetensors.torch import save_file

    model, cfg, md = model_from_checkpoint(read_checkpoint(checkpoint))
    out = Path(out_dir)
    tmp = out.with_name(private_name("", f"{out.name}.tmp"))
    tmp.mkdir(parents=True)
    try:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / MODEL_FILE))
        conf = {"model_type": MODEL_TYPE, "config": cfg.to_dict(), "context_dim": md["context_dim"], "context_tokens": md["context_tokens"],
                "state_dim": md["state_dim"], "action_dim": md["action_dim"],
                "inputs": {"features": "f32 [B, T, D] context tokens as cached", "state": "f32 [B, state_dim] raw"},
                "output": "f32 [B, horizon, action_dim] raw units"}
        (tmp / CONFIG_FILE).write_text(json.dumps(conf, indent=1, default=str))
        (tmp / NORM_FILE).write_text(json.dumps({"norm_stats": md["norm_stats"]}, indent=2))
        fsync_tree(tmp)
        old = out.with_name(private_name("", f"{out.name}.old"))
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


class FlowExpertPolicy:
    """An exported (or checkpointed) flow expert with its norm stats: raw inputs in, raw chunks out."""

    def __init__(self, model, cfg: FlowExpertConfig, norm_stats: dict, state_dim: int, action_dim: int):
        self.model, self.cfg, self.state_dim, self.action_dim = model.eval(), cfg, state_dim, action_dim
        self.state_norm = Normaliser(cfg.normalization, norm_stats["state"])
        self.actions_norm = Normaliser(cfg.normalization, norm_stats["actions"])

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "FlowExpertPolicy":
        from safetensors.torch import load_file

        path = Path(path)
        conf = json.loads((path / CONFIG_FILE).read_text())
        if conf.get("model_type") != MODEL_TYPE:
            raise ValueError(f"{path / CONFIG_FILE}: model_type {conf.get('model_type')!r}, expected {MODEL_TYPE!r}")
        cfg = FlowExpertConfig.from_dict(conf["config"])
        with torch.random.fork_rng(devices=[]):
            model = build_model(cfg, int(conf["context_dim"]))
        model.load_state_dict(load_file(str(path / MODEL_FILE)))
        stats = json.loads((path / NORM_FILE).read_text())["norm_stats"]
        return cls(model.to(device), cfg, stats, int(conf["state_dim"]), int(conf["action_dim"]))

    @torch.no_grad()
    def sample_actions(self, features: torch.Tensor, state: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """features [B, T, D] (context tokens as cached), state [B, state_dim] raw -> chunks [B, H, action_dim] raw."""
        dev = next(self.model.parameters()).device
        s = pad_dims(self.state_norm.normalise(np.asarray(state.cpu(), np.float64)), self.cfg.max_action_dim, "state")
        out = sample_normalised(self.model, features.float().to(dev), torch.from_numpy(s).to(dev), generator, self.cfg.num_steps)
        return self.actions_norm.unnormalise(out[..., :self.action_dim])
