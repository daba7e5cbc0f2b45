"""``VelocityHeadConfig``: everything ``navcache train velocity-head`` needs, frozen; named presets; the caches it reads.

    navcache train velocity-head [--preset demo|default] [--config velocity_head.yaml] [--set loss=mse]

    # velocity_head.yaml (every key optional; on top of the preset)
    cache_root: ./navcache_cache
    dataset: demo_vamos
    splits: [train, val]
    features: auto          # pooled (frame_features' patch_pooled grid) | tokens (patch_tokens) | auto
    hidden: 64
    chunk: false            # also predict the whole path v [H, 2]
    loss: l1                # l1 | mse, on q99-normalised velocities
    token_loss_weight: 0.0  # > 0: add CE over OpenVLA's 256 action bins
    loop: {epochs: 60, batch_size: 32, lr: 3.0e-3}
    out_dir: runs/velocity_head
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from navcache.heads.configs import HeadConfig, load_head_config
from navcache.heads.train_loop import LoopConfig

HEAD = "velocity-head"
#: the caches this head reads, for each split of its dataset (spec names, see cache_specs/specs)
READS = ("frame_features", "velocity")
FEATURES = ("auto", "pooled", "tokens")
LOSSES = ("l1", "mse")


@dataclass(frozen=True)
class VelocityHeadConfig(HeadConfig):
    cache_root: str = "navcache_cache"
    dataset: str = "demo_vamos"
    splits: tuple[str, str] = ("train", "val")  # (train split, val split); statistics come from the train split
    features: str = "auto"  # "auto": the full patch tokens when the cache stores them, else the pooled grid
    use_image: bool = True  # False: goal only (an ablation: how much the image adds)
    hidden: int = 64  # width d of the pooled feature, the goal embedding and the MLP
    heads: int = 4  # attention heads of the pooling
    dropout: float = 0.1
    chunk: bool = False  # also predict v [H, 2] (masked by v_valid) besides the action
    chunk_loss_weight: float = 0.5
    loss: str = "l1"  # on q99-normalised velocities
    token_loss_weight: float = 0.0  # CE over OpenVLA's 256 bins of each action dimension; 0 = off
    vocab_size: int = 32000  # for the token ids reported and exported (Llama-2's, OpenVLA's base)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(epochs=60, batch_size=32, lr=3e-3, weight_decay=0.05))
    out_dir: str = "runs/velocity_head"  # overrides loop.out_dir

    def __post_init__(self):
        need = self._need
        self._need_splits()
        need(self.features in FEATURES, "features", f"must be one of {list(FEATURES)}")
        need(self.loss in LOSSES, "loss", f"must be one of {list(LOSSES)}")
        for name in ("hidden", "heads"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "must be an int >= 1")
        need(self.hidden % self.heads == 0, "hidden", f"must be a multiple of heads ({self.heads})")
        need(isinstance(self.vocab_size, int) and self.vocab_size > 256, "vocab_size", "must be an int > 256")
        need(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        for name in ("chunk_loss_weight", "token_loss_weight"):
            need(isinstance(getattr(self, name), (int, float)) and getattr(self, name) >= 0, name, "must be a number >= 0")
        need(isinstance(self.loop, LoopConfig), "loop", "must be a LoopConfig")
        self._normalise()


Config = VelocityHeadConfig

#: demo: the embedded demo world's VAMOS split (what ``navcache train velocity-head`` runs with no options);
#: default: a project with a ``vamos`` dataset (train / val splits, frame-features + velocity stages).
PRESETS: dict[str, VelocityHeadConfig] = {
    "demo": VelocityHeadConfig(),
    "default": VelocityHeadConfig(dataset="vamos"),
}


def load_config(path: str | Path | None = None, preset: str = "demo", **overrides) -> VelocityHeadConfig:
    """``preset``, then the YAML file at ``path`` (if any), then keyword overrides (None = not given)."""
    return load_head_config(VelocityHeadConfig, PRESETS, preset, path, overrides, HEAD)
