"""``HeatmapsConfig``: the inter-frame heatmaps head, frozen; named presets; the caches it reads.

    navcache train heatmaps [--preset demo|default] [--config heatmaps.yaml] [--set fusion=concat_mlp]

    # heatmaps.yaml (every key optional; on top of the preset)
    cache_root: ./navcache_cache
    dataset: demo_heatmaps            # covisibility targets, keyframes, DINOv3 patch tokens of the keyframes
    tokens_dataset: demo_heatmaps_vggt  # whose geometry cache holds the VGGT tokens (null = dataset)
    splits: [train, val]
    fusion: cross_attention           # or concat_mlp
    llm: null                         # null: no LLM; random-qwen2: tiny seeded random-init Qwen2; else an id or folder
    d_model: 64
    camera_cues: true                 # B's pose in A's camera (from dataset's geometry) as an input
    loop: {epochs: 6, batch_size: 32, lr: 1.0e-3}
    out_dir: runs/heatmaps
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from navcache.heads.configs import HeadConfig, load_head_config
from navcache.heads.train_loop import LoopConfig

HEAD = "heatmaps"
#: the caches this head reads, for each split of its dataset (spec names, see cache_specs/specs),
#: in build order; the VGGT tokens come from ``tokens_dataset``'s geometry (see ``reads``)
READS = ("geometry", "keyframes", "covisibility", "frame_features")
FUSIONS = ("concat_mlp", "cross_attention")
#: ``llm`` value for the tiny seeded random-init Qwen2 (demo and tests; labelled random_init)
RANDOM_QWEN2 = "random-qwen2"


@dataclass(frozen=True)
class HeatmapsConfig(HeadConfig):
    cache_root: str = "navcache_cache"
    dataset: str = "demo_heatmaps"
    #: the dataset whose ``geometry`` cache holds VGGT ``tokens`` for the same episodes and frames;
    #: None = ``dataset`` itself (a VGGT geometry chain). The demo's targets come from the
    #: simulator's geometry, its tokens from a tiny VGGT over the same videos.
    tokens_dataset: str | None = "demo_heatmaps_vggt"
    splits: tuple[str, str] = ("train", "val")  # (train split, val split)
    fusion: str = "cross_attention"  # how A's tokens see B's: concat_mlp | cross_attention
    d_model: int = 64  # width of the fused per-cell features
    heads: int = 4  # attention heads (cross_attention)
    llm: str | None = None  # None: no LLM; "random-qwen2": tiny random-init Qwen2; else hub id or local folder
    llm_seed: int = 0  # seed of the random-init Qwen2
    dropout: float = 0.1
    #: feed each pair's camera cues (B's pose in A's camera, from ``dataset``'s geometry cache) to the model
    camera_cues: bool = True
    #: weight of the loss on the convex-upsampled map (its pixels' mass summed back per cell, against
    #: the same target): the only signal that trains the upsampling mask; 0 leaves the mask untrained
    upsample_loss_weight: float = 0.5
    #: the convex upsampling's factor r is ceil(image side / grid), at most this (RAFT's 8): its mask
    #: has 9 r^2 channels and the upsampling loss r^2 pixels a cell, so r = 16 (the demo's 128 px over
    #: 8 cells) made a training step ~4x dearer; the G*r map is resized bilinearly to the image
    max_upsample: int = 8
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(epochs=12, batch_size=32, lr=1e-3, weight_decay=0.05))
    out_dir: str = "runs/heatmaps"  # overrides loop.out_dir

    def __post_init__(self):
        need = self._need
        self._need_splits()
        need(self.fusion in FUSIONS, "fusion", f"must be one of {list(FUSIONS)}")
        for name in ("d_model", "heads"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "must be an int >= 1")
        need(self.d_model % self.heads == 0, "d_model", f"must be a multiple of heads={self.heads}")
        need(isinstance(self.llm_seed, int), "llm_seed", "must be an int")
        need(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        need(isinstance(self.camera_cues, bool), "camera_cues", "must be true or false")
        need(isinstance(self.max_upsample, int) and self.max_upsample >= 1, "max_upsample", "must be an int >= 1")
        need(isinstance(self.upsample_loss_weight, (int, float)) and self.upsample_loss_weight >= 0, "upsample_loss_weight", "must be >= 0")
        need(isinstance(self.loop, LoopConfig), "loop", "must be a LoopConfig")
        if self.llm is not None:
            object.__setattr__(self, "llm", str(self.llm))
        if self.tokens_dataset is not None:
            from navcache.cache_specs.config import check_name

            check_name("dataset", self.tokens_dataset, "tokens_dataset")
        self._normalise()

    @property
    def tokens_from(self) -> str:
        """The dataset whose geometry cache holds the VGGT tokens."""
        return self.tokens_dataset or self.dataset


Config = HeatmapsConfig

#: demo: the embedded demo's glances (``navcache train heatmaps`` with no options), with the frozen
#: tiny random Qwen2 between fusion and decoder as Spatial-MLLM's stage 1; 6 epochs, since val KL
#: bottoms out by epoch 3-5 on the ~1,900 train pairs and best.pt keeps the lowest (early stopping);
#: default: a project whose VGGT geometry chain holds everything (README's ``scans`` with
#: ``covisibility`` and ``keep_tokens``), no LLM.
PRESETS: dict[str, HeatmapsConfig] = {
    "demo": HeatmapsConfig(llm=RANDOM_QWEN2, loop=LoopConfig(epochs=6, batch_size=32, lr=1e-3, weight_decay=0.05)),
    "default": HeatmapsConfig(dataset="scans", tokens_dataset=None),
}


def reads(dataset: str, splits, config: HeatmapsConfig | None = None) -> list[tuple[str, str, str]]:
    """[(dataset, split, spec)] this head reads: ``READS`` of ``dataset``, then the geometry of the
    tokens dataset ``config`` (else the preset for ``dataset``) pairs with it (the demo's ``demo_heatmaps_vggt``)."""
    if config is not None:
        tokens = config.tokens_from
    else:
        tokens = {p.dataset: p.tokens_from for p in PRESETS.values()}.get(dataset, dataset)
    out = [(dataset, split, spec) for split in splits for spec in READS]
    return out + [(tokens, split, "geometry") for split in splits if tokens != dataset]


def load_config(path: str | Path | None = None, preset: str = "demo", **overrides) -> HeatmapsConfig:
    """``preset``, then the YAML file at ``path`` (if any), then keyword overrides (None = not given)."""
    return load_head_config(HeatmapsConfig, PRESETS, preset, path, overrides, HEAD)
