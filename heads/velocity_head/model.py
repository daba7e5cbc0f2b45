"""The velocity head: cached patch features + goal point -> OpenVLA's action (v_x, v_y), optionally the path.

    patches [B, P, D] -> LayerNorm, Linear(D, d) + position embedding [P, d]
    goal    [B, 2] (pixels, standardised with the train split's mean/std) -> MLP -> g [B, d]
    attention pooling: one query (a learned vector + g: where to look depends on the goal) over the P
    patches (nn.MultiheadAttention) -> z [B, d]
    MLP([z, g]) -> h [B, d] -> action [B, 2], optionally chunk [B, H, 2], and token logits [B, 2, 256]

Outputs are q99-normalised (OpenVLA's BOUNDS_Q99, in [-1, 1]); ``predict.py`` unnormalises them.
heads/ has no shared connector MLP to reuse (heads/sim_heads projects into an LLM), hence this module.
"""
from __future__ import annotations

import torch
from torch import nn

from navcache.heads.exports.openvla_stats import N_BINS


class VelocityHead(nn.Module):
    def __init__(self, D: int, P: int, H: int, hidden: int = 64, heads: int = 4, dropout: float = 0.1,
                 use_image: bool = True, chunk: bool = False, token_logits: bool = False):
        super().__init__()
        self.config = dict(D=D, P=P, H=H, hidden=hidden, heads=heads, dropout=dropout, use_image=use_image, chunk=chunk,
                           token_logits=token_logits)
        d = hidden
        self.goal_mlp = nn.Sequential(nn.Linear(2, d), nn.GELU(), nn.Linear(d, d))
        if use_image:
            self.norm = nn.LayerNorm(D)
            self.proj = nn.Linear(D, d)
            self.pos = nn.Parameter(torch.zeros(P, d))
            self.query = nn.Parameter(torch.randn(d) * 0.02)
            self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(2 * d if use_image else d, d), nn.GELU(), nn.Dropout(dropout), nn.Linear(d, d), nn.GELU())
        self.action = nn.Linear(d, 2)
        self.chunk = nn.Linear(d, 2 * H) if chunk else None
        self.tokens = nn.Linear(d, 2 * N_BINS) if token_logits else None

    def forward(self, patches: torch.Tensor, goal: torch.Tensor) -> dict[str, torch.Tensor]:
        """patches [B, P, D], goal [B, 2] standardised -> {"action": [B, 2], "chunk": [B, H, 2]?, "token_logits": [B, 2, 256]?}."""
        g = self.goal_mlp(goal.float())
        if self.config["use_image"]:
            x = self.proj(self.norm(patches.float())) + self.pos
            q = (self.query + g)[:, None]
            z, _ = self.attn(q, x, x, need_weights=False)
            g = torch.cat([z[:, 0], g], -1)
        h = self.mlp(g)
        out = {"action": self.action(h)}
        if self.chunk is not None:
            out["chunk"] = self.chunk(h).view(len(h), -1, 2)
        if self.tokens is not None:
            out["token_logits"] = self.tokens(h).view(len(h), 2, N_BINS)
        return out
