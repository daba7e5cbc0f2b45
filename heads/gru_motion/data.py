"""The gru-motion head's data path: the ``poses`` cache of two splits, loaded whole into torch tensors.

Bins of steps touching front padding (``step_valid`` false) are ``IGNORE_INDEX`` (-100) here
whatever the cache's spec version stored (v2 wrote 0 = "stop, hard right"), so no loss or
baseline can count them as a class.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from navcache.cache_specs import open_cache
from navcache.cache_specs.specs.poses import IGNORE_INDEX

ARRAYS = ("deltas", "dist_bins", "yaw_bins", "step_valid")
#: the poses spec version that added deltas and bins
MIN_SPEC_VERSION = 2


def load_poses_split(cache_root: str | Path, dataset: str, split: str) -> tuple[dict[str, torch.Tensor], dict]:
    """({deltas [N, S, 3] f32, dist_bins / yaw_bins [N, S] i64 (-100 off step_valid), step_valid [N, S] bool},
    {"dist_edges", "yaw_edges", "episodes", "path"})."""
    with open_cache(cache_root, dataset, split, "poses") as c:
        if c.spec["version"] < MIN_SPEC_VERSION:
            raise RuntimeError(f"{c.path} holds poses spec v{c.spec['version']}; gru-motion needs v{MIN_SPEC_VERSION}+ (deltas, bins): rerun `navcache extract`")
        arrays = {name: torch.from_numpy(np.ascontiguousarray(c.load(name))) for name in ARRAYS}
        valid = arrays["step_valid"].bool()
        for name in ("dist_bins", "yaw_bins"):
            arrays[name] = torch.where(valid, arrays[name].long(), IGNORE_INDEX)
        settings = c.manifest.get("identity", {}).get("settings", {})
        info = {"dist_edges": list(settings["dist_edges"]), "yaw_edges": list(settings["yaw_edges"]), "episodes": list(c.episodes), "path": str(c.path)}
    return arrays, info
