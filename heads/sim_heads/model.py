"""SIM v0 model: trainable projections around a frozen decoder-only LLM, read out at a query token.

Sequence fed to the LLM through ``inputs_embeds``: [K visual tokens, 1 telemetry token, 1 query token].
The three heads read the query token's last hidden state (it is last, so causal attention lets it see
every other token).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

from cache_specs.labels import ACTION, REASON, RISK, TELEMETRY_FIELDS

N_CLASSES = {"risk": len(RISK), "reason": len(REASON), "action": len(ACTION)}
RANDOM_GPT2 = {"n_layer": 2, "n_head": 2, "n_embd": 64}


def make_random_gpt2(path: str | Path, seed: int = 0) -> Path:
    """A tiny seeded random-init GPT-2 saved with ``save_pretrained`` (reused when already there)."""
    from transformers import GPT2Config, GPT2Model

    path = Path(path)
    marker = path / "navcache_random_init.json"
    want = {"random_init": True, "seed": seed, **RANDOM_GPT2}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return path
    cfg = GPT2Config(**RANDOM_GPT2, n_positions=64, vocab_size=256, bos_token_id=None, eos_token_id=None, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2Model(cfg)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    marker.write_text(json.dumps(want) + "\n")
    return path


def load_frozen_llm(path: str | Path) -> nn.Module:
    """``AutoModel.from_pretrained(path)``: every parameter frozen, eval mode."""
    from transformers import AutoModel

    llm = AutoModel.from_pretrained(str(path))
    for p in llm.parameters():
        p.requires_grad_(False)
    return llm.eval()


class SimV0Model(nn.Module):
    def __init__(self, llm: nn.Module, dv: int, F_frames: int, K: int = 4, n_telemetry: int = len(TELEMETRY_FIELDS),
                 telemetry_hidden: int = 64, dropout: float = 0.0):
        super().__init__()
        if K > F_frames:
            raise ValueError(f"K={K} visual tokens need at least K frames, got F={F_frames}")
        self.llm = llm
        d = int(llm.config.hidden_size)  # never set by hand
        self.d, self.dv, self.F, self.K = d, dv, F_frames, K
        self.vis_norm = nn.LayerNorm(dv)
        self.vis_proj = nn.Sequential(nn.Linear(dv, d), nn.GELU(), nn.Linear(d, d))
        self.vis_pos = nn.Parameter(torch.zeros(K, d))
        self.tel_mlp = nn.Sequential(nn.Linear(n_telemetry, telemetry_hidden), nn.GELU(), nn.Linear(telemetry_hidden, d))
        self.query = nn.Parameter(torch.randn(d) * 0.02)
        self.drop = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({h: nn.Linear(d, n) for h, n in N_CLASSES.items()})

    def train(self, mode: bool = True):
        super().train(mode)
        self.llm.eval()  # the frozen LLM stays in eval mode whatever the loop asks
        return self

    def forward(self, vis_feats: torch.Tensor, telemetry: torch.Tensor) -> dict[str, torch.Tensor]:
        B = vis_feats.shape[0]
        x = self.vis_norm(vis_feats.float())
        x = F.adaptive_avg_pool1d(x.transpose(1, 2), self.K).transpose(1, 2)
        vis = self.drop(self.vis_proj(x) + self.vis_pos)
        tel = self.drop(self.tel_mlp(telemetry.float()))[:, None]
        q = self.query.expand(B, 1, self.d)
        emb = torch.cat([vis, tel, q], 1).to(next(self.llm.parameters()).dtype)
        h = self.llm(inputs_embeds=emb).last_hidden_state[:, -1].float()  # query token
        return {name: head(h) for name, head in self.heads.items()}
