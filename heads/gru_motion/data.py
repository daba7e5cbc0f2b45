"""The gru-motion head's data path: the ``poses`` cache of two splits, loaded whole into torch tensors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from navcache.cache_specs import open_cache

ARRAYS = ("deltas", "dist_bins", "yaw_bins", "step_valid")
#: the poses spec version that added deltas and bins
MIN_SPEC_VERSION = 2


def load_poses_split(cache_root: str | Path, dataset: str, split: str) -> tuple[dict[str, torch.Tensor], dict]:
    """({deltas, dist_bins, yaw_bins, step_valid} as tensors [N, S, ...], {"dist_edges", "yaw_edges", "episodes"})."""
    with open_cache(cache_root, dataset, split, "poses") as c:
        if c.spec["version"] < MIN_SPEC_VERSION:
            raise RuntimeError(f"{c.path} holds poses spec v{c.spec['version']}; gru-motion needs v{MIN_SPEC_VERSION}+ (deltas, bins): rerun `navcache extract`")
        arrays = {name: torch.from_numpy(np.ascontiguousarray(c.load(name))) for name in ARRAYS}
        settings = c.manifest.get("identity", {}).get("settings", {})
        info = {"dist_edges": list(settings["dist_edges"]), "yaw_edges": list(settings["yaw_edges"]), "episodes": list(c.episodes), "path": str(c.path)}
    return arrays, info
