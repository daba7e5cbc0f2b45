"""The gru-motion head's data path: the ``poses`` cache of two splits, loaded whole into torch tensors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cache_specs import open_cache

ARRAYS = ("deltas", "dist_bins", "yaw_bins", "step_valid")


def load_poses_split(cache_root: str | Path, dataset: str, split: str) -> tuple[dict[str, torch.Tensor], dict]:
    """({deltas, dist_bins, yaw_bins, step_valid} as tensors [N, S, ...], {"dist_edges", "yaw_edges", "episodes"})."""
    with open_cache(cache_root, dataset, split, "poses") as c:
        arrays = {name: torch.from_numpy(np.ascontiguousarray(c.load(name))) for name in ARRAYS}
        settings = c.manifest.get("identity", {}).get("settings", {})
        info = {"dist_edges": list(settings["dist_edges"]), "yaw_edges": list(settings["yaw_edges"]), "episodes": list(c.episodes), "path": str(c.path)}
    return arrays, info


def cache_exists(cache_root: str | Path, dataset: str, split: str) -> bool:
    from cache_specs.layout import cache_dir

    return (cache_dir(Path(cache_root), dataset, split, "poses") / "manifest.json").exists()


def ensure_demo_caches(cache_root: str | Path, dataset: str, splits, cwd: Path | None = None, say=print) -> None:
    """Build the demo poses caches with the pipeline when they are missing (demo project only)."""
    missing = [s for s in splits if not cache_exists(cache_root, dataset, s)]
    if not missing:
        return
    from pipeline.project import resolve_project
    from pipeline.runner import ExtractOptions, extract

    project = resolve_project(cwd=cwd, say=say)
    if Path(project.cache_root).resolve() != Path(cache_root).resolve() or dataset not in project.datasets:
        raise FileNotFoundError(
            f"no poses cache for {dataset} split(s) {missing} under {cache_root}; run `navcache extract --split <split>` first")
    for s in missing:
        say(f"gru-motion: building the {dataset} {s} poses cache")
        summary = extract(project, ExtractOptions(s, only="poses", datasets=(dataset,)))
        if summary.errors:
            raise RuntimeError(f"extract {dataset}/{s} failed: {summary.errors}")
