"""``keyframes``: choose N_k of an episode's N_m sampled frames from its ``geometry`` rows.

``space-aware`` is Spatial-MLLM's greedy voxel coverage (``pipeline/keyframes.py``); ``uniform`` is
the evenly spaced baseline, scored on the same voxels. Both run on the per-frame voxel sets the
geometry stage computed from the provider's full-resolution float32 maps (the geometry rows'
``voxels``), never on the strided fp16 maps, so the picks are Spatial-MLLM's whatever the geometry
``stride``. ``frame-features`` can then encode only the chosen frames (``frames_from: keyframes``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np

from navcache.cache_specs.specs import get_spec

from ..errors import Quarantine
from .base import Prepared, Stage


@dataclass(frozen=True)
class KeyframesSettings:
    strategy: Literal["space-aware", "uniform"] = "space-aware"
    #: N_k, keyframes per episode (fewer when coverage saturates early)
    num_keyframes: int = 16

    def __post_init__(self):
        if self.strategy not in ("space-aware", "uniform"):
            raise ValueError(f"strategy must be 'space-aware' or 'uniform', got {self.strategy!r}")
        if self.num_keyframes < 1:
            raise ValueError(f"num_keyframes must be >= 1, got {self.num_keyframes}")


class KeyframesStage(Stage):
    name = "keyframes"
    # 2: selects on the geometry rows' full-resolution voxel sets instead of the fp16 maps
    code_version = "2"
    reads_files = False  # everything comes from the geometry rows, whose fingerprint is upstream
    uses = ()  # everything comes from the geometry rows
    kept_fields = ("n_frames",)
    Settings = KeyframesSettings

    @property
    def consumes(self) -> tuple[str, ...]:
        return ("geometry",)

    def spec(self):
        return get_spec("keyframes")

    def dims(self) -> dict[str, int]:
        return {}

    @property
    def batch_cost(self) -> int:
        return 1

    def prepare(self, episode, upstream: Mapping) -> Prepared:
        from .. import keyframes

        geo = upstream["geometry"]
        pick = keyframes.greedy if self.settings.strategy == "space-aware" else keyframes.uniform_on
        try:
            sel = pick(keyframes.read_voxel_rows(geo, "stages.geometry.max_frame_voxels"), self.settings.num_keyframes)
        except ValueError as e:
            raise Quarantine(f"keyframes: {e}") from None
        n = len(sel.positions)
        coverage = sel.coverage[sel.pick_order].astype(np.float32)  # pick order -> rows sorted by frame
        return Prepared(
            episode.episode_id,
            {
                "frame_index": geo["frame_index"][sel.positions].astype(np.int64),
                "position": sel.positions.astype(np.int64),
                "pick_order": sel.pick_order.astype(np.int64),
                "gain": sel.gains.astype(np.int64),
                "coverage": coverage,
                "n_voxels": np.full(n, sel.n_voxels, np.int64),
                "voxel_size": np.full(n, sel.voxel_size, np.float32),
                "threshold": np.full(n, sel.threshold, np.float32),
            },
        )

    def compute(self, items):
        return [it.payload for it in items]
