"""``poses``: planar poses at the T sampled frames of each episode, and the motion between them.

Providers: ``gt`` reads the source's ground-truth pose file; ``geometry`` converts the camera
extrinsics of the ``geometry`` cache (VGGT or ground truth) to ground-plane poses with
``pipeline.camera.planar_poses`` (first camera level; x forward, y left, yaw CCW from its axis).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np

from navcache.cache_specs.specs import get_spec
from navcache.cache_specs.specs.poses import IGNORE_INDEX

from ..camera import planar_poses
from ..errors import Quarantine
from ..motion import DIST_EDGES_M, YAW_EDGES_DEG, bin_steps, egocentric_deltas
from .base import Prepared, Stage


@dataclass(frozen=True)
class PosesSettings:
    #: where poses come from: the source's pose file, or the ``geometry`` cache's cameras
    provider: Literal["gt", "geometry"] = "gt"
    #: reject poses whose |x| or |y| exceed this (metres): a unit error or a corrupt file
    max_abs_position: float = 1e5
    #: travelled-distance bin edges (metres), increasing; see pipeline/motion.py
    dist_edges: tuple[float, ...] = DIST_EDGES_M
    #: heading-change bin edges (degrees, positive = left), increasing
    yaw_edges: tuple[float, ...] = YAW_EDGES_DEG

    def __post_init__(self):
        if self.provider not in ("gt", "geometry"):
            raise ValueError(f"provider must be 'gt' or 'geometry', got {self.provider!r}")
        for name in ("dist_edges", "yaw_edges"):
            e = getattr(self, name)
            if not e or any(b <= a for a, b in zip(e, e[1:])):
                raise ValueError(f"{name} must be a non-empty strictly increasing list, got {list(e)}")


class PosesStage(Stage):
    name = "poses"
    code_version = "3"  # 3: bins of padded steps are IGNORE_INDEX (-100), not 0 (= a hard right turn)
    reads_files = False
    uses = ("poses",)
    required_uses = ("poses",)  # the sampled frame numbers live there, whatever the provider
    Settings = PosesSettings

    def spec(self):
        return get_spec("poses")

    def dims(self) -> dict[str, int]:
        t = int(getattr(self.source, "num_frames", 8))
        return {"T": t, "S": t - 1}

    @property
    def consumes(self) -> tuple[str, ...]:
        return ("geometry",) if self.settings.provider == "geometry" else ()

    def identity(self) -> dict:
        ident = super().identity()
        if self.settings.provider == "gt":  # keeps fingerprints of caches built before providers existed
            ident["settings"].pop("provider")
        return ident

    def prepare(self, episode, upstream: Mapping) -> Prepared:
        rec = self.record(episode)
        frame_index = np.asarray(rec["sample_indices"], dtype=np.int64)  # [T], -1 on front padding
        t = self.dims()["T"]
        if frame_index.shape != (t,):
            raise Quarantine(f"episode was sampled to {frame_index.shape} frames, stage expects T={t}")
        real = frame_index >= 0
        if self.settings.provider == "geometry":
            picked = self._from_geometry(upstream["geometry"], frame_index[real])
        else:
            picked = self._from_pose_file(rec, frame_index[real])
        if not np.isfinite(picked).all():
            raise Quarantine("NaN or infinite pose at a sampled frame")
        if np.abs(picked[:, :2]).max(initial=0) > self.settings.max_abs_position:
            raise Quarantine(f"pose position beyond {self.settings.max_abs_position} m")
        out = np.zeros((t, 3), np.float32)
        out[real] = picked
        # padding sits at the front, so the valid steps are exactly those between two real frames
        valid = real[:-1] & real[1:]
        deltas = np.zeros((t - 1, 3), np.float64)
        if valid.any():
            deltas[valid] = egocentric_deltas(picked)  # [n_real - 1, 3] == valid.sum() steps
        dist_bins, yaw_bins = bin_steps(deltas, self.settings.dist_edges, self.settings.yaw_edges)
        # -100, not 0: a loss that forgets step_valid must skip these steps, not learn "stop, hard right"
        dist_bins[~valid] = IGNORE_INDEX
        yaw_bins[~valid] = IGNORE_INDEX
        return Prepared(
            episode.episode_id,
            {
                "poses": out,
                "frame_index": frame_index,
                "padded": frame_index < 0,
                "deltas": deltas.astype(np.float32),
                "dist_bins": dist_bins,
                "yaw_bins": yaw_bins,
                "step_valid": valid,
            },
        )

    @staticmethod
    def _from_pose_file(rec: Mapping, frame_index: np.ndarray) -> np.ndarray:
        poses = rec.get("poses")
        if rec.get("pose_error"):
            raise Quarantine(rec["pose_error"])
        if poses is None:
            raise Quarantine("no ground-truth poses for this episode (pose file missing or has no entry)")
        poses = np.asarray(poses, dtype=np.float64)
        if poses.ndim != 2 or poses.shape[1] != 3 or len(poses) != rec["n_frames"]:
            raise Quarantine(f"poses have shape {poses.shape}, expected ({rec['n_frames']}, 3)")
        return poses[frame_index]

    @staticmethod
    def _from_geometry(geo: Mapping[str, np.ndarray], frame_index: np.ndarray) -> np.ndarray:
        row = {int(f): i for i, f in enumerate(geo["frame_index"])}
        missing = [int(f) for f in frame_index if int(f) not in row]
        if missing:
            raise Quarantine(f"geometry cache has no camera for sampled frame(s) {missing[:5]}")
        extr = np.asarray(geo["extrinsic"], np.float64)[[row[int(f)] for f in frame_index]]
        if not np.isfinite(extr).all():
            raise Quarantine("geometry cache has a NaN or infinite camera")
        return planar_poses(extr)

    def compute(self, items):
        return [it.payload for it in items]
