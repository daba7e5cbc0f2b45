"""``SimHeadsConfig``: everything the SIM v0 heads trainer needs, frozen; named presets; the caches it reads.

    navcache train sim-heads [--preset demo|default] [--config sim_heads.yaml] [--set loop.lr=0.001]

    # sim_heads.yaml (every key optional; on top of the preset)
    cache_root: ./navcache_cache
    dataset: demo_rover
    splits: [train, val]
    llm: null                             # null: a tiny seeded random-init GPT-2; else a local HF folder
    K: 4
    loss_weights: {risk: 1.0, reason: 0.5, action: 1.0}
    data_mode: auto                       # memory | stream (larger than RAM) | auto (stream over the budget)
    memory_budget_mb: 4096
    loop: {epochs: 40, batch_size: 32, lr: 3.0e-3}
    out_dir: runs/sim_heads
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from navcache.heads.configs import HeadConfig, load_head_config
from navcache.heads.train_loop import LoopConfig

HEAD = "sim-heads"
HEAD_NAMES = ("risk", "reason", "action")
#: the caches this head reads, for each split of its dataset (spec names, see cache_specs/specs)
READS = ("frame_features", "rover_meta")


def _default_loop() -> LoopConfig:
    return LoopConfig(epochs=40, batch_size=32, lr=3e-3, weight_decay=0.01)


@dataclass(frozen=True)
class SimHeadsConfig(HeadConfig):
    cache_root: str = "navcache_cache"
    dataset: str = "demo_rover"
    splits: tuple[str, str] = ("train", "val")  # (train split, val split)
    llm: str | None = None  # local folder for AutoModel.from_pretrained; None = tiny random GPT-2
    llm_seed: int = 0  # seed of the random-init GPT-2 (llm=None only)
    K: int = 4  # visual tokens after pooling the F frames over time
    telemetry_hidden: int = 64
    dropout: float = 0.0  # on the trainable projections (the frozen LLM never uses dropout)
    loss_weights: dict = field(default_factory=lambda: {"risk": 1.0, "reason": 0.5, "action": 1.0})
    use_sample_weights: bool = True  # weighted mean of the per-sample CE with the source's `weight`
    # input path: "memory" holds both splits as tensors, "stream" reads blocks from disk every epoch
    # (cache_specs.make_loader; splits larger than RAM), "auto" streams when they exceed the budget
    data_mode: Literal["auto", "memory", "stream"] = "auto"
    memory_budget_mb: int = 4096
    num_workers: int = 0  # DataLoader worker processes of the streaming path
    shuffle_buffer: int = 1024  # samples (streaming path)
    loop: LoopConfig = field(default_factory=_default_loop)
    out_dir: str = "runs/sim_heads"  # overrides loop.out_dir

    def __post_init__(self):
        need = self._need
        self._need_splits()
        for name in ("K", "telemetry_hidden", "memory_budget_mb", "shuffle_buffer"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "must be an int >= 1")
        need(isinstance(self.llm_seed, int), "llm_seed", "must be an int")
        need(self.data_mode in ("auto", "memory", "stream"), "data_mode", "must be 'auto', 'memory' or 'stream'")
        need(isinstance(self.num_workers, int) and self.num_workers >= 0, "num_workers", "must be an int >= 0")
        need(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        lw = dict(self.loss_weights or {})
        need(set(lw) <= set(HEAD_NAMES), "loss_weights", f"keys must be among {HEAD_NAMES}")
        lw = {h: float(lw.get(h, {"risk": 1.0, "reason": 0.5, "action": 1.0}[h])) for h in HEAD_NAMES}
        need(all(v >= 0 for v in lw.values()) and sum(lw.values()) > 0, "loss_weights", "must be >= 0 and not all 0")
        need(isinstance(self.loop, LoopConfig), "loop", "must be a LoopConfig")
        object.__setattr__(self, "loss_weights", lw)
        if self.llm is not None:
            object.__setattr__(self, "llm", str(self.llm))
        self._normalise()

    def __hash__(self):  # loss_weights is a dict; hash the plain form
        return hash(repr(self.to_dict()))



Config = SimHeadsConfig

#: demo: the embedded demo world's rover caches (what ``navcache train sim-heads`` runs with no options);
#: default: a project laid out like the README's navcache.yaml (its ``rover`` dataset).
PRESETS: dict[str, SimHeadsConfig] = {
    "demo": SimHeadsConfig(),
    "default": SimHeadsConfig(dataset="rover"),
}


def load_config(path: str | Path | None = None, preset: str = "demo", **overrides) -> SimHeadsConfig:
    """``preset``, then the YAML file at ``path`` (if any), then keyword overrides (None = not given)."""
    return load_head_config(SimHeadsConfig, PRESETS, preset, path, overrides, HEAD)
