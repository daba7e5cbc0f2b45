"""Stages by name, imported lazily (lerobot-style registry). Each lives in ``pipeline/stages/<module>.py``."""
from __future__ import annotations

import importlib

from ..errors import ConfigError

STAGES: dict[str, str] = {
    "poses": "navcache.pipeline.stages.poses:PosesStage",
    "frame-features": "navcache.pipeline.stages.frame_features:FrameFeaturesStage",
    "geometry": "navcache.pipeline.stages.geometry:GeometryStage",
    "keyframes": "navcache.pipeline.stages.keyframes:KeyframesStage",
    "rover-meta": "navcache.pipeline.stages.rover_meta:RoverMetaStage",
    "covisibility": "navcache.pipeline.stages.covisibility:CovisibilityStage",
    "robot-meta": "navcache.pipeline.stages.robot_meta:RobotMetaStage",
    "velocity": "navcache.pipeline.stages.velocity:VelocityStage",
    "spatial": "navcache.pipeline.stages.spatial:SpatialStage",
    "spatial-llava3d": "navcache.pipeline.stages.spatial_llava3d:SpatialLlava3DStage",
    "spatial-llava3d-lm": "navcache.pipeline.stages.spatial_llava3d_lm:SpatialLlava3DLMStage",
}


def stage_class(name: str):
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r} (valid: {', '.join(STAGES)})")
    mod, cls = STAGES[name].split(":")
    return getattr(importlib.import_module(mod), cls)


def cache_name(stage: str) -> str:
    """Folder of a stage's cache under ``<root>/<dataset>/<split>/``."""
    return stage.replace("-", "_")
