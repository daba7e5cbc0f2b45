"""The gru-motion head's data path: the ``poses`` cache of two splits, loaded whole into torch tensors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cache_specs import open_cache

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


def usable(cache_root: str | Path, dataset: str, split: str) -> bool:
    """A complete poses cache with the arrays this head reads."""
    from cache_specs.layout import MANIFEST, cache_dir, read_json

    path = cache_dir(Path(cache_root), dataset, split, "poses") / MANIFEST
    return path.exists() and read_json(path)["spec"]["version"] >= MIN_SPEC_VERSION


def ensure_demo_caches(cache_root: str | Path, dataset: str, splits, cwd: Path | None = None, say=print) -> None:
    """Build the demo poses caches with the pipeline when missing or left by an older navcache (demo only)."""
    missing = [s for s in splits if not usable(cache_root, dataset, s)]
    if not missing:
        return
    from pipeline.project import resolve_project
    from pipeline.runner import ExtractOptions, extract

    project = resolve_project(cwd=cwd, say=say)
    if Path(project.cache_root).resolve() != Path(cache_root).resolve() or dataset not in project.datasets:
        raise FileNotFoundError(
            f"no poses cache for {dataset} split(s) {missing} under {cache_root}; run `navcache extract --split <split>` first")
    for s in missing:
        summary = extract(project, ExtractOptions(s, only="poses", datasets=(dataset,)))
        if summary.errors:
            raise RuntimeError(f"extract {dataset}/{s} failed: {summary.errors}")
