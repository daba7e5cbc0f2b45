"""The SIM heads' data path: rover ``frame_features`` caches + (for now) labels from the rover source.

vis_feats [N, F, 2D] float32 per clip: concat(``cls``, mean of ``patch_pooled`` over the G x G grid),
one row per frame of the cache (row="frame"; every clip must have the same F).

TEMPORARY: the frame_features cache holds no labels, telemetry or weights yet. Until a ``rover_meta``
cache stage exists, ``load_rover_meta`` reads them from the rover source's episode records
(``make_source("rover", root).episodes(split)`` -> ``Episode.record``), joined by episode_id to the
cache's episodes. A ``rover_meta`` cache stage will replace this function; nothing else here reads
the source.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cache_specs import open_cache
from cache_specs.labels import TELEMETRY_FIELDS


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


def load_rover_meta(rover_root: str | Path, split: str, episodes: list[str]) -> dict[str, torch.Tensor]:
    """{telemetry [N, 8] f32 (raw), risk/reason/action [N] int64, weight [N] f32}, in ``episodes`` order.

    Interim: reads the rover source's records; a ``rover_meta`` cache stage will replace this.
    Raises when a cached episode has no usable record in the source.
    """
    from pipeline.sources import make_source

    records = {ep.episode_id: ep for ep in make_source("rover", Path(rover_root)).episodes(split)}
    missing = [e for e in episodes if e not in records or records[e].quarantine is not None]
    if missing:
        raise ValueError(f"rover source {rover_root} split {split!r}: no usable record for {len(missing)} cached episode(s), e.g. {missing[:3]}")
    recs = [records[e].record for e in episodes]
    return {
        "telemetry": torch.tensor([r["telemetry"] for r in recs], dtype=torch.float32).reshape(len(recs), len(TELEMETRY_FIELDS)),
        "risk": torch.tensor([r["risk_id"] for r in recs], dtype=torch.int64),
        "reason": torch.tensor([r["reason_id"] for r in recs], dtype=torch.int64),
        "action": torch.tensor([r["action_id"] for r in recs], dtype=torch.int64),
        "weight": torch.tensor([r["weight"] for r in recs], dtype=torch.float32),
    }


def load_split(cache_root, dataset: str, rover_root, split: str) -> tuple[dict[str, torch.Tensor], dict]:
    vis, episodes, info = load_frame_features(cache_root, dataset, split)
    arrays = {"vis_feats": vis, **load_rover_meta(rover_root, split, episodes)}
    return arrays, {**info, "episodes": episodes, "n": len(episodes)}


def telemetry_stats(train_telemetry: torch.Tensor) -> dict[str, list[float]]:
    """Per-field mean/std of the train split (std floored at 1e-6), stored in checkpoint metadata."""
    mean = train_telemetry.mean(0)
    std = train_telemetry.std(0, unbiased=False).clamp_min(1e-6)
    return {"mean": mean.tolist(), "std": std.tolist(), "fields": list(TELEMETRY_FIELDS)}


def normalise_telemetry(t: torch.Tensor, stats: dict) -> torch.Tensor:
    return (t - torch.tensor(stats["mean"])) / torch.tensor(stats["std"])
