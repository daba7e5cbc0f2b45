"""``GruMotionConfig``: everything ``navcache train gru-motion`` needs, frozen; named presets; the caches it reads.

    navcache train gru-motion [--preset demo|default] [--config gru_motion.yaml] [--set hidden=32]

    # gru_motion.yaml (every key optional; on top of the preset)
    cache_root: ./navcache_cache
    dataset: demo_motion
    splits: [train, val]
    emb_dim: 16
    hidden: 64
    layers: 1
    k: 3
    loop: {epochs: 30, batch_size: 16, lr: 3.0e-3}
    out_dir: runs/gru_motion
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from navcache.heads.configs import HeadConfig, load_head_config
from navcache.heads.train_loop import LoopConfig

HEAD = "gru-motion"
#: the caches this head reads, for each split of its dataset (spec names, see cache_specs/specs)
READS = ("poses",)


@dataclass(frozen=True)
class GruMotionConfig(HeadConfig):
    cache_root: str = "navcache_cache"
    dataset: str = "demo_motion"
    splits: tuple[str, str] = ("train", "val")  # (train split, val split) of the poses cache
    emb_dim: int = 16  # embedding size of each of the dist and yaw bins
    use_deltas: bool = True  # also feed the continuous (dx, dy, dyaw) of each step
    hidden: int = 64  # GRU hidden size H = size of the exported motion embeddings
    layers: int = 1
    dropout: float = 0.0  # between GRU layers (layers > 1) and before the heads
    k: int = 3  # the k-step head predicts the bins of step t+k from steps <= t
    predict_deltas: bool = False  # add a next-step (dx, dy, dyaw) regression head
    delta_loss_weight: float = 1.0
    k_loss_weight: float = 1.0
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(epochs=30, batch_size=16, lr=3e-3, weight_decay=0.01))
    out_dir: str = "runs/gru_motion"  # overrides loop.out_dir

    def __post_init__(self):
        need = self._need
        self._need_splits()
        for name in ("emb_dim", "hidden", "layers", "k"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "must be an int >= 1")
        need(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        need(self.delta_loss_weight >= 0, "delta_loss_weight", "must be >= 0")
        need(self.k_loss_weight >= 0, "k_loss_weight", "must be >= 0")
        need(isinstance(self.loop, LoopConfig), "loop", "must be a LoopConfig")
        self._normalise()



Config = GruMotionConfig

#: demo: the embedded demo world's NaVILA poses (what ``navcache train gru-motion`` runs with no options);
#: default: a project laid out like the README's navcache.yaml (its ``r2r`` dataset, val_unseen).
PRESETS: dict[str, GruMotionConfig] = {
    # the settings that beat every baseline on the demo's motion set across seeds (BENCHMARKS.md)
    "demo": GruMotionConfig(hidden=32, emb_dim=8, dropout=0.2,
                            loop=LoopConfig(epochs=30, batch_size=64, lr=3e-3, weight_decay=0.05)),
    "default": GruMotionConfig(dataset="r2r", splits=("train", "val_unseen")),
}


def load_config(path: str | Path | None = None, preset: str = "demo", **overrides) -> GruMotionConfig:
    """``preset``, then the YAML file at ``path`` (if any), then keyword overrides (None = not given)."""
    return load_head_config(GruMotionConfig, PRESETS, preset, path, overrides, HEAD)
