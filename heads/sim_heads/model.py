"""SIM v0 model: trainable projections around a frozen decoder-only LLM, read out at a query token.

Sequence fed to the LLM through ``inputs_embeds``: [K visual tokens, 1 telemetry token, 1 query token].
The three heads read the query token's last hidden state (it is last, so causal attention lets it see
every other token).
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

from navcache.cache_specs.labels import ACTION, LABELS, REASON, RISK, TELEMETRY_FIELDS
from navcache.cache_specs.layout import TMP_PREFIX, private_name, sweep_stale_temporaries

N_CLASSES = {"risk": len(RISK), "reason": len(REASON), "action": len(ACTION)}
RANDOM_GPT2 = {"n_layer": 2, "n_head": 2, "n_embd": 64}


RANDOM_INIT_MARKER = "navcache_random_init.json"


def random_gpt2_marker(seed: int, arch: dict | None = None) -> dict:
    """What ``make_random_gpt2`` writes beside the weights: the seed and sizes that define them."""
    return {"random_init": True, "seed": seed, **(arch or RANDOM_GPT2)}


def make_random_gpt2(path: str | Path, seed: int = 0, arch: dict | None = None) -> Path:
    """A tiny seeded random-init GPT-2 saved with ``save_pretrained`` (reused when already there).

    ``arch``: {n_layer, n_head, n_embd}, default ``RANDOM_GPT2`` (a checkpoint records the sizes it
    was trained with, so inference can re-create the same weights even if the default changes).
    """
    from transformers import GPT2Config, GPT2Model

    path = Path(path)
    arch = dict(arch or RANDOM_GPT2)
    marker = path / RANDOM_INIT_MARKER
    want = random_gpt2_marker(seed, arch)
    if marker.exists() and json.loads(marker.read_text()) == want:
        return path
    cfg = GPT2Config(**arch, n_positions=64, vocab_size=256, bos_token_id=None, eos_token_id=None, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2Model(cfg)
    # build beside, then rename: DDP ranks may all get here at once, and none may see half a model
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path.parent, TMP_PREFIX + path.name)  # what ranks killed mid-save left
    tmp = path.parent / private_name(TMP_PREFIX, path.name)
    tmp.mkdir()
    try:
        with quiet_transformers():
            model.save_pretrained(tmp)
        (tmp / RANDOM_INIT_MARKER).write_text(json.dumps(want) + "\n")
        if path.exists():
            if marker.exists() and json.loads(marker.read_text()) == want:
                return path  # another rank finished first
            shutil.rmtree(path)
        try:
            os.replace(tmp, path)
        except OSError:  # another rank renamed its identical copy into place meanwhile
            if not (marker.exists() and json.loads(marker.read_text()) == want):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


@contextmanager
def quiet_transformers():
    """transformers' own logging at warnings and its progress bars ("Loading weights") off, restored
    after: a load is one step of a training run, and its info lines would bury the epoch lines."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity(max(verbosity, hf_logging.WARNING))  # warnings and errors still show
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_frozen_llm(path: str | Path) -> nn.Module:
    """``AutoModel.from_pretrained(path)``: every parameter frozen, eval mode (transformers kept quiet)."""
    from transformers import AutoModel

    with quiet_transformers():
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

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "SimV0Model":
        """Load an export folder (``<out_dir>/export`` of a sim-heads run): eval mode, on ``map_location``,
        ready for ``predict_json``; ``model.export_config`` is its config.json (telemetry_norm: the train
        stats to normalise telemetry with). Safetensors + JSON only; see ``heads.sim_heads.export``."""
        from .export import load_export

        return load_export(path, map_location)[0]

    @torch.no_grad()
    def predict_json(self, batch: dict) -> list[dict]:
        """One plain dict per sample, ready for ``json.dumps``::

            {"id": "ep_0007",                      # only when the batch carries "id" or "sample_id"
             "risk":   {"label": "high", "probs": {"none": 0.01, "low": 0.04, "medium": 0.15, "high": 0.80}},
             "reason": {"label": ..., "probs": {...}},
             "action": {"label": ..., "probs": {...}}}

        batch: "vis_feats" [B, F, dv], "telemetry" [B, 8] (already normalised with the TRAIN stats),
        optionally "id" / "sample_id": B strings. probs: softmax of the logits; label: the argmax of
        the logits (the prediction the trainer's metrics score). Class names: ``cache_specs.labels``.
        Runs in eval mode and restores the previous mode.
        """
        was_training = self.training
        self.eval()
        try:
            dev = next(p for p in self.parameters() if p.requires_grad).device
            logits = self(batch["vis_feats"].to(dev), batch["telemetry"].to(dev))
        finally:
            self.train(was_training)
        ids = batch.get("id", batch.get("sample_id"))
        B = len(batch["vis_feats"])
        if ids is not None and len(ids) != B:
            raise ValueError(f"batch has {len(ids)} ids for {B} samples")
        per_head = {}
        for h, names in LABELS.items():
            lg = logits[h].float()
            per_head[h] = (lg.argmax(-1).tolist(), lg.softmax(-1).cpu().tolist(), names)
        out = []
        for i in range(B):
            rec: dict = {} if ids is None else {"id": str(ids[i])}
            for h, (pred, probs, names) in per_head.items():
                rec[h] = {"label": names[pred[i]], "probs": dict(zip(names, probs[i]))}
            out.append(rec)
        return out
