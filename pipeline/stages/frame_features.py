"""``frame-features``: a frozen image encoder (DINOv3 by default) over each episode's sampled frames."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, Mapping

import numpy as np

from navcache.cache_specs.specs import get_spec
from navcache.cache_specs.specs.frame_features import SPEC_WITH_PATCHES

from ..encoders.base import BatchSizer
from ..encoders.hf_vision import EncoderSettings, HFVisionEncoder
from .base import Prepared, Stage


@dataclass(frozen=True)
class FrameFeaturesSettings:
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    #: patch tokens are average-pooled to a pool_grid x pool_grid grid
    pool_grid: int = 2
    #: also keep the full patch grid (fp16; large)
    store_patch_tokens: bool = False
    #: frames per encoder forward (batches span episodes); "auto": the largest that fits,
    #: starting at max_batch_size and halving on out-of-memory (remembered for the run)
    batch_size: int | Literal["auto"] = 32
    #: where "auto" starts, and the frames gathered per encoder call with "auto"
    max_batch_size: int = 256
    #: "source": the source's own sampling (NaVILA's 8 frames, a clip's frames);
    #: "keyframes": only the frames the ``keyframes`` stage chose (its cache is an upstream)
    frames_from: Literal["source", "keyframes"] = "source"

    def __post_init__(self):
        if self.frames_from not in ("source", "keyframes"):
            raise ValueError(f"frames_from must be 'source' or 'keyframes', got {self.frames_from!r}")
        if self.pool_grid < 1:
            raise ValueError(f"pool_grid must be >= 1, got {self.pool_grid}")
        if self.batch_size != "auto" and self.batch_size < 1:
            raise ValueError(f"batch_size must be 'auto' or >= 1, got {self.batch_size}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")


class FrameFeaturesStage(Stage):
    name = "frame-features"
    code_version = "1"
    # what is decoded is fixed by the files read (content-hashed) and the fields the source
    # declares for its frames; labels, instructions and poses do not change pixels
    uses = ("frames",)
    skip_file_suffixes = (".gt.npz",)  # ground-truth geometry sidecars: pixels never come from them
    Settings = FrameFeaturesSettings

    def __init__(self, settings, source, source_options):
        super().__init__(settings, source, source_options)
        self.encoder = HFVisionEncoder(settings.encoder)
        self.batches = BatchSizer(settings.batch_size, settings.max_batch_size)

    @property
    def consumes(self) -> tuple[str, ...]:
        return ("keyframes",) if self.settings.frames_from == "keyframes" else ()

    def spec(self):
        return SPEC_WITH_PATCHES if self.settings.store_patch_tokens else get_spec("frame_features")

    def dims(self) -> dict[str, int]:
        d = {"D": self.encoder.hidden_size(), "G": self.settings.pool_grid}
        if self.settings.store_patch_tokens:
            size = self.encoder.processor_config().get("size", {})
            patch = self.encoder.patch_size()
            d.update(Hp=int(size.get("height", 224)) // patch, Wp=int(size.get("width", 224)) // patch)
        return d

    def identity(self) -> dict:
        s = self.settings
        # batch size and device change speed, not values: keep them out of the fingerprint
        ident = {"pool_grid": s.pool_grid, "store_patch_tokens": s.store_patch_tokens, "encoder": self.encoder.identity()}
        if s.frames_from != "source":  # keeps fingerprints of caches built before the option existed
            ident["frames_from"] = s.frames_from
        return ident

    def provenance(self) -> dict:
        return {"encoder": self.encoder.provenance()}

    def check(self, seen: dict | None = None) -> None:
        self.encoder.check(f"stages.{self.name}.encoder.model", seen)

    @property
    def batch_cost(self) -> int:
        s = self.settings
        return s.max_batch_size if s.batch_size == "auto" else s.batch_size

    def setup(self) -> None:
        self.encoder.load()

    @cached_property
    def resize_to(self) -> tuple[int, int]:
        """(width, height) ``encoder.preprocess`` resizes every frame to (the processor's ``size``):
        sources may decode huge JPEGs reduced towards it, so memory follows the model, not the file."""
        size = self.encoder.processor_config().get("size") or {}
        edge = size.get("shortest_edge", 224)
        return int(size.get("width", edge)), int(size.get("height", edge))

    def prepare(self, episode, upstream: Mapping) -> Prepared:
        if self.settings.frames_from == "keyframes":
            frames = self.source.read_frames(episode, upstream["keyframes"]["frame_index"].tolist(), resize_to=self.resize_to)
        else:
            frames = self.source.read_frames(episode, resize_to=self.resize_to)
        x = self.encoder.preprocess(frames.pixels)
        return Prepared(episode.episode_id, (x, frames.indices.astype(np.int64), frames.padded.astype(bool)), cost=len(x))

    def compute(self, items: list[Prepared]) -> list[dict[str, np.ndarray]]:
        import torch

        x = torch.cat([it.payload[0] for it in items])  # [F, 3, S_h, S_w] over every item's frames
        key = (self.encoder.s.model, tuple(x.shape[1:]), self.encoder.resolved_device())
        chunks = self.batches.run(key, x, self._encode)
        cls = torch.cat([c[0] for c in chunks]).numpy()
        pooled = torch.cat([c[1] for c in chunks]).numpy()
        patches = torch.cat([c[2] for c in chunks]).numpy() if self.settings.store_patch_tokens else None
        out, s = [], 0
        for it in items:
            n = it.cost
            arrays = {"cls": cls[s : s + n], "patch_pooled": pooled[s : s + n], "frame_index": it.payload[1], "padded": it.payload[2]}
            if patches is not None:
                arrays["patch_tokens"] = patches[s : s + n]
            out.append(arrays)
            s += n
        return out

    def _encode(self, x):
        """One forward: [n, 3, S_h, S_w] -> fp16 (cls [n, D], pooled [n, G, G, D], patches [n, Hp, Wp, D] or None)."""
        import torch.nn.functional as F

        cls, patches = self.encoder.encode(x)
        pooled = F.adaptive_avg_pool2d(patches.permute(0, 3, 1, 2), self.settings.pool_grid).permute(0, 2, 3, 1)
        return cls.half(), pooled.half(), patches.half() if self.settings.store_patch_tokens else None
