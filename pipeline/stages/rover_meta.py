"""``rover-meta``: the rover table's labels, telemetry and weights, as a cache.

Trainers then read only caches (never the source), and the train split's telemetry statistics are
computed once, at finalisation, and kept in the manifest (``stats``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from navcache.cache_specs.labels import TELEMETRY_FIELDS
from navcache.cache_specs.specs import get_spec

from .base import Prepared, Stage


@dataclass(frozen=True)
class RoverMetaSettings:
    pass


class RoverMetaStage(Stage):
    name = "rover-meta"
    code_version = "1"
    reads_files = False
    uses = ("labels",)
    required_uses = ("labels",)
    Settings = RoverMetaSettings

    def spec(self):
        return get_spec("rover_meta")

    def dims(self) -> dict[str, int]:
        return {}

    def prepare(self, episode, upstream: Mapping) -> Prepared:
        r = self.record(episode)
        return Prepared(
            episode.episode_id,
            {
                "telemetry": np.asarray(r["telemetry"], np.float32).reshape(len(TELEMETRY_FIELDS)),
                "risk": np.int64(r["risk_id"]),
                "reason": np.int64(r["reason_id"]),
                "action": np.int64(r["action_id"]),
                "weight": np.float32(r["weight"]),
            },
        )

    def compute(self, items):
        return [it.payload for it in items]

    def cache_stats(self, load: Callable[[str], np.ndarray]) -> dict:
        t = load("telemetry").astype(np.float64)  # [N, 8]
        if len(t) == 0:
            return {}
        return {"telemetry": {"fields": list(TELEMETRY_FIELDS), "count": int(len(t)), "mean": t.mean(0).tolist(),
                              "std": np.maximum(t.std(0), 1e-6).tolist()}}
