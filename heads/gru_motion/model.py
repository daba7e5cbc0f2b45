"""The motion encoder (bins + deltas -> GRU embeddings) and the training model with its heads.

Inputs per episode, S = T-1 steps (from the ``poses`` cache):
    deltas [B, S, 3] f32, dist_bins [B, S] i64, yaw_bins [B, S] i64, step_valid [B, S] bool.
Invalid steps (front padding; their bins are -100 in the poses cache and the sidecar) are zeroed at the input, so whatever they hold cannot reach any
valid output, and their own embeddings are zero. Padding is at the front, so valid outputs see
only zeros before the first real step.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

ENCODER_FILE, CONFIG_FILE = "model.safetensors", "config.json"


class MotionEncoder(nn.Module):
    """(deltas, dist_bins, yaw_bins, step_valid) -> motion embeddings [B, S, H] (causal: output t sees steps <= t)."""

    def __init__(self, n_dist: int, n_yaw: int, emb_dim: int = 16, hidden: int = 64, layers: int = 1,
                 use_deltas: bool = True, dropout: float = 0.0):
        super().__init__()
        self.config = dict(n_dist=n_dist, n_yaw=n_yaw, emb_dim=emb_dim, hidden=hidden, layers=layers, use_deltas=use_deltas, dropout=dropout)
        self.dist_emb = nn.Embedding(n_dist, emb_dim)
        self.yaw_emb = nn.Embedding(n_yaw, emb_dim)
        d_in = 2 * emb_dim + (3 if use_deltas else 0) + 1  # + 1: the valid flag
        self.gru = nn.GRU(d_in, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.hidden = hidden

    def forward(self, deltas: torch.Tensor, dist_bins: torch.Tensor, yaw_bins: torch.Tensor, step_valid: torch.Tensor) -> torch.Tensor:
        v = step_valid.bool()
        vf = v.unsqueeze(-1).to(self.dist_emb.weight.dtype)
        zero = torch.zeros_like(dist_bins)
        parts = [self.dist_emb(torch.where(v, dist_bins, zero)), self.yaw_emb(torch.where(v, yaw_bins, zero))]
        if self.config["use_deltas"]:
            parts.append(torch.where(v.unsqueeze(-1), deltas, torch.zeros_like(deltas)).to(vf.dtype))
        x = torch.cat(parts, dim=-1) * vf
        h, _ = self.gru(torch.cat([x, vf], dim=-1))
        return h * vf

    # -- export / import ---------------------------------------------------------------------------
    def save_pretrained(self, out_dir: str | Path, extra: dict | None = None) -> Path:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(out / ENCODER_FILE), metadata={"format": "pt"})
        cfg = {"model_type": "navcache-gru-motion-encoder", "class": "navcache.heads.gru_motion.MotionEncoder", **self.config, **(extra or {})}
        (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "MotionEncoder":
        """Load an exported encoder (``export/`` of a gru-motion run); returned in eval mode, frozen."""
        from safetensors.torch import load_file

        path = Path(path)
        cfg = json.loads((path / CONFIG_FILE).read_text())
        keys = ("n_dist", "n_yaw", "emb_dim", "hidden", "layers", "use_deltas", "dropout")
        enc = cls(**{k: cfg[k] for k in keys})
        enc.load_state_dict(load_file(str(path / ENCODER_FILE), device=str(map_location)))
        enc.export_config = cfg
        for p in enc.parameters():
            p.requires_grad_(False)
        return enc.to(map_location).eval()  # load_state_dict copies into the CPU-built module


class GruMotionModel(nn.Module):
    """Encoder + heads. From output t: bins of step t+1 (next), bins of step t+k, optionally deltas of t+1."""

    def __init__(self, n_dist: int, n_yaw: int, emb_dim: int, hidden: int, layers: int, use_deltas: bool,
                 dropout: float, predict_deltas: bool):
        super().__init__()
        self.encoder = MotionEncoder(n_dist, n_yaw, emb_dim, hidden, layers, use_deltas, dropout)
        self.drop = nn.Dropout(dropout)
        self.next_dist, self.next_yaw = nn.Linear(hidden, n_dist), nn.Linear(hidden, n_yaw)
        self.k_dist, self.k_yaw = nn.Linear(hidden, n_dist), nn.Linear(hidden, n_yaw)
        self.next_delta = nn.Linear(hidden, 3) if predict_deltas else None

    def forward(self, deltas, dist_bins, yaw_bins, step_valid) -> dict[str, torch.Tensor]:
        h = self.drop(self.encoder(deltas, dist_bins, yaw_bins, step_valid))
        out = {"next_dist": self.next_dist(h), "next_yaw": self.next_yaw(h), "k_dist": self.k_dist(h), "k_yaw": self.k_yaw(h)}
        if self.next_delta is not None:
            out["next_delta"] = self.next_delta(h)
        return out
