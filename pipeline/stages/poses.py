"""``poses``: ground-truth planar poses at the T sampled frames of each episode."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from cache_specs.specs import get_spec

from ..errors import Quarantine
from .base import Prepared, Stage


@dataclass(frozen=True)
class PosesSettings:
    #: reject poses whose |x| or |y| exceed this (metres): a unit error or a corrupt file
    max_abs_position: float = 1e5


class PosesStage(Stage):
    name = "poses"
    code_version = "1"
    reads_files = False
    record_keys = ("poses", "pose_error", "n_frames", "sample_indices")
    Settings = PosesSettings

    def spec(self):
        return get_spec("poses")

    def dims(self) -> dict[str, int]:
        return {"T": int(getattr(self.source, "num_frames", 8))}

    def prepare(self, episode, upstream: Mapping) -> Prepared:
        rec = episode.record
        poses = rec.get("poses")
        if rec.get("pose_error"):
            raise Quarantine(rec["pose_error"])
        if poses is None:
            raise Quarantine("no ground-truth poses for this episode (pose file missing or has no entry)")
        poses = np.asarray(poses, dtype=np.float64)
        if poses.ndim != 2 or poses.shape[1] != 3 or len(poses) != rec["n_frames"]:
            raise Quarantine(f"poses have shape {poses.shape}, expected ({rec['n_frames']}, 3)")
        frame_index = np.asarray(rec["sample_indices"], dtype=np.int64)  # [T], -1 on front padding
        t = self.dims()["T"]
        if frame_index.shape != (t,):
            raise Quarantine(f"episode was sampled to {frame_index.shape} frames, stage expects T={t}")
        real = frame_index >= 0
        picked = poses[frame_index[real]]
        if not np.isfinite(picked).all():
            raise Quarantine("NaN or infinite pose at a sampled frame")
        if np.abs(picked[:, :2]).max(initial=0) > self.settings.max_abs_position:
            raise Quarantine(f"pose position beyond {self.settings.max_abs_position} m")
        out = np.zeros((t, 3), np.float32)
        out[real] = picked
        return Prepared(episode.episode_id, {"poses": out, "frame_index": frame_index, "padded": frame_index < 0})

    def compute(self, items):
        return [it.payload for it in items]
