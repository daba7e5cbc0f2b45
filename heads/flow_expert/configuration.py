"""``FlowExpertConfig``: the connector MLP + pi0-style action expert trainer, frozen; presets; the caches it reads.

    navcache train flow-expert [--preset demo|pi0-expert|pi05-expert] [--config flow.yaml] [--set horizon=16]

    # flow.yaml (every key optional; on top of the preset)
    cache_root: ./navcache_cache
    dataset: demo_lerobot                  # its robot_meta cache: state, action per frame
    splits: [train, val]
    context_datasets: []                   # datasets whose per-frame caches are the context ([]: dataset)
    context_cache: frame_features          # any row="frame" cache with a frame_index array
    context_arrays: [cls, patch_pooled]    # each [..., D] -> tokens, concatenated (same D)
    horizon: 8
    max_action_dim: 8                      # state and actions zero-padded to this (openpi: 32)
    normalization: zscore                  # zscore (pi0) | quantile (pi05)
    time_conditioning: mlp_mix             # mlp_mix (pi0: time mixed into the action tokens) | adarms (pi05)
    norm_stats: null                       # a norm_stats.json; null: computed from the train robot_meta
    width: 64                              # expert width; depth, mlp_dim, num_heads, num_kv_heads, head_dim
    connector_lr: 1.0e-3
    expert_lr: 1.0e-3                      # the real presets: 1e-4 as the seed says (see PRESETS)
    data_mode: auto                        # memory | stream (larger than RAM) | auto (stream over the budget)
    memory_budget_mb: 4096
    loop: {epochs: 30, batch_size: 32, schedule: cosine, warmup_steps: 20, min_lr: 1.0e-5}
    out_dir: runs/flow_expert

The frozen perception (the encoder that wrote the context cache) is never loaded here: its
output is the cache. ``loop.lr`` is unused: the two parameter groups carry their own rates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from navcache.cache_specs.config import check_name
from navcache.heads.configs import HeadConfig, load_head_config
from navcache.heads.train_loop import LoopConfig

HEAD = "flow-expert"
#: the caches this head reads, for each split of its dataset (spec names, see cache_specs/specs);
#: frame_features is the default context cache (``context_cache`` names another)
READS = ("robot_meta", "frame_features")
#: how the expert sees the flow time: "mlp_mix" (pi0), "adarms" (pi05); model.py
TIME_CONDITIONINGS = ("mlp_mix", "adarms")


def _default_loop() -> LoopConfig:
    return LoopConfig(epochs=60, batch_size=64, lr=1e-3, weight_decay=1e-4)


@dataclass(frozen=True)
class FlowExpertConfig(HeadConfig):
    cache_root: str = "navcache_cache"
    dataset: str = "demo_lerobot"
    splits: tuple[str, str] = ("train", "val")
    context_datasets: tuple[str, ...] = ()  # () = (dataset,); one per camera cache, say
    context_cache: str = "frame_features"
    context_arrays: tuple[str, ...] = ("cls", "patch_pooled")
    horizon: int = 8  # H: action offsets 0..H-1 (openpi's action_horizon)
    max_action_dim: int = 8  # openpi pads state and actions to 32
    normalization: Literal["zscore", "quantile"] = "zscore"
    norm_stats: str | None = None
    # pi0: the time embedding mixed into each action token by an MLP, the state a suffix token;
    # pi05: adaptive RMSNorm of a time MLP in every block, the state a prefix token (model.py)
    time_conditioning: Literal["mlp_mix", "adarms"] = "mlp_mix"
    # the expert (openpi gemma Config fields)
    width: int = 64
    depth: int = 2
    mlp_dim: int = 128
    num_heads: int = 4
    num_kv_heads: int = 1
    head_dim: int = 16
    connector_hidden: int = 0  # 0 = width
    connector_lr: float = 1e-3
    expert_lr: float = 1e-4
    num_steps: int = 10  # Euler steps when sampling (dt = -1 / num_steps from t = 1)
    eval_seed: int = 0  # noise of the sampled chunks in evaluation and predict
    # input path: "memory" holds both splits as tensors, "stream" reads the context caches through
    # the house's streaming loader every epoch (robot_meta held in memory, see stream.py), "auto"
    # streams when the memory path's tensors exceed the budget
    data_mode: Literal["auto", "memory", "stream"] = "auto"
    memory_budget_mb: int = 4096
    num_workers: int = 0  # DataLoader worker processes of the streaming path
    shuffle_buffer: int = 1024  # samples (streaming path)
    loop: LoopConfig = field(default_factory=_default_loop)
    out_dir: str = "runs/flow_expert"

    def __post_init__(self):
        need = self._need
        self._need_splits()
        for name in ("horizon", "max_action_dim", "width", "depth", "mlp_dim", "num_heads", "num_kv_heads", "head_dim", "num_steps",
                     "memory_budget_mb", "shuffle_buffer"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "must be an int >= 1")
        need(isinstance(self.connector_hidden, int) and self.connector_hidden >= 0, "connector_hidden", "must be an int >= 0 (0 = width)")
        need(self.num_heads % self.num_kv_heads == 0, "num_kv_heads", f"must divide num_heads ({self.num_heads})")
        need(self.width % 2 == 0, "width", "must be even (sin-cos time embedding)")
        need(self.data_mode in ("auto", "memory", "stream"), "data_mode", "must be 'auto', 'memory' or 'stream'")
        need(isinstance(self.num_workers, int) and self.num_workers >= 0, "num_workers", "must be an int >= 0")
        need(self.normalization in ("zscore", "quantile"), "normalization", "must be 'zscore' (pi0) or 'quantile' (pi05)")
        need(self.time_conditioning in TIME_CONDITIONINGS, "time_conditioning",
             f"must be one of {', '.join(map(repr, TIME_CONDITIONINGS))} ('mlp_mix': pi0, 'adarms': pi05)")
        for name in ("connector_lr", "expert_lr"):
            need(isinstance(getattr(self, name), (int, float)) and getattr(self, name) > 0, name, "must be a number > 0")
        need(len(self.context_arrays) >= 1 and all(isinstance(a, str) and a for a in self.context_arrays), "context_arrays",
             "must name at least one array of the context cache")
        need(isinstance(self.loop, LoopConfig), "loop", "must be a LoopConfig")
        object.__setattr__(self, "context_datasets", tuple(self.context_datasets))
        for i, d in enumerate(self.context_datasets):
            check_name("dataset", d, f"context_datasets[{i}]")
        if self.norm_stats is not None:
            object.__setattr__(self, "norm_stats", str(self.norm_stats))
        self._normalise()

    @property
    def contexts(self) -> tuple[str, ...]:
        """The datasets whose ``context_cache`` gives the context tokens."""
        return self.context_datasets or (self.dataset,)

    @property
    def hidden(self) -> int:
        return self.connector_hidden or self.width


Config = FlowExpertConfig

_GEMMA_300M = dict(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256)

#: demo: a tiny expert on the embedded demo's LeRobot drives (forward camera's DINOv3 tokens), trained
#: from scratch, so its expert lr is 1e-3 rather than the seed's 1e-4: openpi's 1e-4 fine-tunes a
#: pretrained expert over ~30k steps, while the demo's random-init expert gets ~750 steps (at 1e-4 it
#: is still far above the repeat-last baseline after them, val MSE 0.038 vs 0.028); cosine decay keeps
#: the last epochs stable (at a constant 1e-3 val MSE jumped 3x in the final epochs);
#: pi0-expert: openpi's action expert shape (gemma_300m: width 1024, depth 18, mlp 4096, 8 heads, 1 KV
#: head of 256), horizon 50, 32-dim padding, z-score, time mixed into the action tokens; pi05-expert:
#: the same shape with quantile normalisation and pi05's adaRMS time conditioning (the state then
#: a prefix token: pi05 writes it into the prompt as text tokens, see model.py).
PRESETS: dict[str, FlowExpertConfig] = {
    "demo": FlowExpertConfig(expert_lr=1e-3, loop=LoopConfig(epochs=30, batch_size=32, lr=1e-3, weight_decay=1e-4, warmup_steps=20,
                                                              schedule="cosine", min_lr=1e-5)),
    "pi0-expert": FlowExpertConfig(dataset="libero", horizon=50, max_action_dim=32, normalization="zscore", **_GEMMA_300M,
                                   loop=LoopConfig(epochs=10, batch_size=32, lr=1e-4, weight_decay=1e-10, warmup_steps=1000,
                                                   schedule="cosine", min_lr=2.5e-6)),
    "pi05-expert": FlowExpertConfig(dataset="libero", horizon=50, max_action_dim=32, normalization="quantile", time_conditioning="adarms",
                                    **_GEMMA_300M,
                                    loop=LoopConfig(epochs=10, batch_size=32, lr=1e-4, weight_decay=1e-10, warmup_steps=1000,
                                                    schedule="cosine", min_lr=2.5e-6)),
}

#: default: what a real project trains (every head has one): the pi0 expert on a dataset named ``libero``
PRESETS["default"] = PRESETS["pi0-expert"]


def reads(dataset: str, splits, config: FlowExpertConfig | None = None) -> list[tuple[str, str, str]]:
    """[(dataset, split, spec)] this head reads: ``robot_meta`` of ``dataset`` and the context cache of
    each context dataset of ``config`` (a second camera's dataset, say), for each split; without a
    config, the demo preset's (``dataset``'s own frame_features)."""
    cfg = config if config is not None else PRESETS["demo"]
    contexts = tuple(dataset if d == cfg.dataset else d for d in cfg.contexts)  # the config's dataset renamed
    return [(dataset, s, "robot_meta") for s in splits] + [(d, s, cfg.context_cache) for s in splits for d in contexts]


def load_config(path: str | Path | None = None, preset: str = "demo", **overrides) -> FlowExpertConfig:
    """``preset``, then the YAML file at ``path`` (if any), then keyword overrides (None = not given)."""
    return load_head_config(FlowExpertConfig, PRESETS, preset, path, overrides, HEAD)
