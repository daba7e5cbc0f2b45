"""``robot-meta``: a robot dataset's per-frame state, action, timestamps and task ids, as a cache.

Cheap (no pixels): it reads the episode's frame table only, so trainers and ``navcache export
norm-stats`` read caches at disk speed instead of the dataset (and never decode its videos).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from navcache.cache_specs.specs import get_spec

from ..errors import ConfigError, Quarantine
from .base import Computed, Prepared, Stage


@dataclass(frozen=True)
class RobotMetaSettings:
    pass


class RobotMetaStage(Stage):
    name = "robot-meta"
    code_version = "1"
    uses = ("labels",)
    required_uses = ("labels",)
    Settings = RobotMetaSettings

    def spec(self):
        return get_spec("robot_meta")

    def dims(self) -> dict[str, int]:
        """S and A from the source's feature shapes (info.json for ``lerobot``)."""
        read = getattr(self.source, "robot_dims", None)
        if read is None:
            raise ConfigError(f"stage 'robot-meta' needs a robot dataset source (lerobot), not {self.source.kind!r}")
        return read()

    def files_read(self, episode) -> tuple:
        return tuple(episode.files[:1])  # the frame table; videos are not read here

    def prepare(self, episode, upstream: Mapping) -> Prepared:
        table = self.source.read_table(episode)
        dims = self.dims()
        n = len(table["timestamp"])
        for name, dim in (("state", "S"), ("action", "A")):
            if name not in table:
                raise Quarantine(f"the dataset has no {name!r} feature (robot-meta stores state and action)")
            if table[name].shape != (n, dims[dim]):
                raise Quarantine(f"{name} has shape {list(table[name].shape)}, info.json says [{n}, {dims[dim]}]")
        rec = self.record(episode)
        arrays = {"state": table["state"], "action": table["action"], "timestamp": table["timestamp"].astype(np.float64),
                  "episode_index": np.full(n, rec["episode_index"], np.int64), "frame_index": table["frame_index"].astype(np.int64),
                  "task_index": table["task_index"].astype(np.int64)}
        return Prepared(episode.episode_id, Computed(arrays, {"task": rec["task"], "task_index": rec["task_index"]}), cost=n)

    def compute(self, items):
        return [it.payload for it in items]
