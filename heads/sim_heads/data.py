"""The SIM heads' data path, caches only: rover ``frame_features`` + ``rover_meta`` of each split.

vis_feats [N, F, 2D] float32 per clip: concat(``cls``, mean of ``patch_pooled`` over the G x G grid),
one row per frame of the cache (row="frame"; every clip must have the same F). Labels, telemetry
and weights come from the ``rover_meta`` cache, joined by episode id (a clip quarantined in either
cache is left out, and the count is reported). Telemetry is normalised with the TRAIN split's
stats, stored in its ``rover_meta`` manifest.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cache_specs import open_cache
from cache_specs.labels import TELEMETRY_FIELDS

META = ("telemetry", "risk", "reason", "action", "weight")


def load_frame_features(cache_root: str | Path, dataset: str, split: str) -> tuple[torch.Tensor, list[str], dict]:
    """(vis_feats [N, F, 2D] float32, episode ids in cache order, info)."""
    with open_cache(cache_root, dataset, split, "frame_features") as c:
        cls = c.load("cls").astype(np.float32)  # [R, D]
        pooled = c.load("patch_pooled").astype(np.float32)  # [R, G, G, D]
        start, length = c.offsets()
        episodes = list(c.episodes)
        path = str(c.path)
    if len(episodes) == 0:
        raise ValueError(f"{path}: no usable episodes")
    F = int(length[0])
    if not (length == F).all():
        raise ValueError(f"{path}: clips have different frame counts {sorted(set(length.tolist()))}; SIM heads need a fixed F")
    rows = (start[:, None] + np.arange(F)[None, :]).reshape(-1)
    feats = np.concatenate([cls[rows], pooled[rows].mean(axis=(1, 2))], axis=-1)  # [N*F, 2D]
    vis = torch.from_numpy(np.ascontiguousarray(feats.reshape(len(episodes), F, -1)))
    return vis, episodes, {"path": path, "F": F, "dv": int(vis.shape[-1])}


def load_rover_meta(cache_root: str | Path, dataset: str, split: str, episodes: list[str]) -> tuple[dict[str, torch.Tensor], dict]:
    """({telemetry [N, 8] f32 raw, risk/reason/action [N] int64, weight [N] f32} for the ``episodes``
    present in the ``rover_meta`` cache (their order kept), {"keep": mask over ``episodes``, "stats"})."""
    with open_cache(cache_root, dataset, split, "rover_meta") as c:
        pos = {e: i for i, e in enumerate(c.episodes)}
        arrays = {name: c.load(name) for name in META}
        stats = c.stats
    keep = np.array([e in pos for e in episodes], bool)
    rows = np.array([pos[e] for e in episodes if e in pos], np.int64)
    out = {name: torch.from_numpy(np.ascontiguousarray(a[rows])) for name, a in arrays.items()}
    return out, {"keep": keep, "stats": stats.get("telemetry")}


def load_split(cache_root, dataset: str, split: str) -> tuple[dict[str, torch.Tensor], dict]:
    vis, episodes, info = load_frame_features(cache_root, dataset, split)
    meta, minfo = load_rover_meta(cache_root, dataset, split, episodes)
    keep = minfo["keep"]
    if not keep.any():
        raise ValueError(f"{dataset}/{split}: no clip has both frame features and rover_meta")
    episodes = [e for e, k in zip(episodes, keep) if k]
    arrays = {"vis_feats": vis[torch.from_numpy(keep)], **meta}
    return arrays, {**info, "episodes": episodes, "n": len(episodes), "dropped": int((~keep).sum()), "telemetry_stats": minfo["stats"]}


def normalise_telemetry(t: torch.Tensor, stats: dict) -> torch.Tensor:
    """(t - mean) / std with the train split's ``rover_meta`` stats; t [N, 8]."""
    if list(stats.get("fields", TELEMETRY_FIELDS)) != list(TELEMETRY_FIELDS):
        raise ValueError(f"telemetry stats are for fields {stats.get('fields')}, expected {list(TELEMETRY_FIELDS)}")
    return (t - torch.tensor(stats["mean"])) / torch.tensor(stats["std"])
