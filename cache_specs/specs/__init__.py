"""Cache specs by name. Each lives in ``cache_specs/specs/<name>.py`` as ``SPEC``; import is lazy."""
from __future__ import annotations

import importlib

from ..spec import CacheSpec

SPECS = ("poses", "frame_features", "geometry", "keyframes", "rover_meta", "covisibility", "robot_meta", "velocity", "spatial", "spatial_llava3d", "spatial_llava3d_lm")


def get_spec(name: str) -> CacheSpec:
    if name not in SPECS:
        raise KeyError(f"unknown cache spec {name!r}; known specs: {', '.join(SPECS)}")
    return importlib.import_module(f"{__name__}.{name}").SPEC
