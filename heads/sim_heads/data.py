"""The SIM heads' data path, caches only: rover ``frame_features`` + ``rover_meta`` of each split.

vis_feats [N, F, 2D] float32 per clip: concat(``cls``, mean of ``patch_pooled`` over the G x G grid),
one row per frame of the cache (row="frame"; every clip must have the same F). Labels, telemetry
and weights come from the ``rover_meta`` cache, joined by episode id with ``cache_specs.join_caches``
(a clip quarantined or absent in either cache is left out, and the drops are reported). Telemetry is
normalised with the TRAIN split's stats, stored in its ``rover_meta`` manifest.

Two paths give the same samples: ``load_split`` holds a split in memory as tensors (the loop's
``TensorBatches``), ``stream_split`` reads it block by block from disk through
``cache_specs.make_loader`` for splits larger than RAM. ``choose_mode`` picks one against a memory budget.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from navcache.cache_specs import open_cache
from navcache.cache_specs.join import join_caches
from navcache.cache_specs.labels import TELEMETRY_FIELDS

META = ("telemetry", "risk", "reason", "action", "weight")
FEATS = ("cls", "patch_pooled")
#: the loader's names for the two caches
CACHES = {"feats": "frame_features", "meta": "rover_meta"}


def _readers(cache_root: str | Path, dataset: str, split: str) -> dict:
    return {k: open_cache(cache_root, dataset, split, spec) for k, spec in CACHES.items()}


def load_split(cache_root, dataset: str, split: str) -> tuple[dict[str, torch.Tensor], dict]:
    """({"vis_feats" [N, F, 2D] f32, "telemetry" [N, 8] f32 raw, "risk"/"reason"/"action" [N] i64,
    "weight" [N] f32}, info) for the clips ok in both caches, in frame_features storage order.

    Reduced chunk by chunk as it is read (``_pooled_features``): peak memory is the result plus
    one stored chunk's float16 rows, not the whole split's G x G grids in float32."""
    readers = _readers(cache_root, dataset, split)
    try:
        join = join_caches(readers)
        if not len(join):
            raise ValueError(f"{dataset}/{split}: no clip has both frame features and rover_meta\n{join.report}")
        feats, meta = readers["feats"], readers["meta"]
        lengths = join.slices["feats"].length
        F = int(lengths[0])
        if not (lengths == F).all():
            raise ValueError(f"{feats.path}: clips have different frame counts {sorted(set(lengths.tolist()))}; SIM heads need a fixed F")
        vis = _pooled_features(feats, join.episodes, join.slices["feats"], F)
        mrows = meta.read(list(join.episodes), arrays=list(META))
        arrays = {"vis_feats": torch.from_numpy(vis), **{n: torch.from_numpy(mrows[n]) for n in META}}
        info = {"path": str(feats.path), "F": F, "dv": int(vis.shape[-1]), "episodes": list(join.episodes), "n": len(join),
                "dropped": join.report.n_dropped.get("feats", 0), "join_report": str(join.report),
                "telemetry_stats": meta.stats.get("telemetry")}
    finally:
        for r in readers.values():
            r.close()
    return arrays, info


def _pooled_features(reader, episodes, slices, F: int) -> np.ndarray:
    """[N, F, 2D] float32: concat(cls, mean of patch_pooled over the G x G grid) of ``episodes``
    (``slices``: where each is stored, from the join), filled one stored chunk of ``patch_pooled``
    at a time: the float16 rows in memory are one chunk's episodes (the unit a read decodes
    anyway), not a part's. The mean accumulates in float32 straight from the float16 rows (no
    float32 copy of the grid)."""
    d = int(reader.spec["arrays"]["cls"]["shape"][-1])
    out = np.empty((len(episodes), F, 2 * d), np.float32)
    for p in np.unique(slices.part):
        sel = np.flatnonzero(slices.part == p)
        chunk = max(1, reader.chunk_rows("patch_pooled", slices.parts[p]))
        block = slices.start[sel] // chunk  # the stored chunk each episode starts in
        for b in np.unique(block):
            idx = sel[block == b]
            rows = reader.read([episodes[i] for i in idx.tolist()], arrays=list(FEATS))  # [n, F, ...] float16
            out[idx, :, :d] = rows["cls"].reshape(len(idx), F, d)
            out[idx, :, d:] = rows["patch_pooled"].mean(axis=(1, 2), dtype=np.float32).reshape(len(idx), F, d)
            del rows
    return out


class SimSample:
    """The loader's per-sample transform (picklable, runs in DataLoader workers): cached arrays of one
    clip -> the model's inputs, exactly what ``load_split`` + ``normalise_telemetry`` give."""

    def __init__(self, stats: dict):
        _check_stats(stats)
        self.mean = np.asarray(stats["mean"], np.float32)
        self.std = np.asarray(stats["std"], np.float32)

    def __call__(self, s: dict) -> dict:
        cls = s["feats.cls"].astype(np.float32)  # [F, D]
        pooled = s["feats.patch_pooled"].astype(np.float32).mean(axis=(1, 2))  # [F, D]
        return {"vis_feats": np.concatenate([cls, pooled], axis=-1), "telemetry": (s["meta.telemetry"] - self.mean) / self.std,
                **{h: s[f"meta.{h}"] for h in ("risk", "reason", "action", "weight")}}


def stream_split(cache_root, dataset: str, split: str, stats: dict, *, batch_size: int, seed: int = 0, rank: int = 0,
                 world: int = 1, shuffle: bool = True, mode: str = "stream", memory_budget: int = 4 << 30,
                 num_workers: int = 0, shuffle_buffer: int = 1024):
    """A ``cache_specs`` streaming loader of the split: batches {"vis_feats" [B, F, 2D] f32,
    "telemetry" [B, 8] f32 normalised with ``stats``, "risk"/"reason"/"action" [B] i64, "weight" [B] f32,
    "episode_id" [B] str}. It is the training loop's ``BatchSource`` (set_epoch, state_dict, ...)."""
    from navcache.cache_specs import make_loader

    return make_loader(_readers(cache_root, dataset, split), {"feats": list(FEATS), "meta": list(META)}, batch_size=batch_size,
                       seed=seed, rank=rank, world_size=world, shuffle=shuffle, drop_last=False, mode=mode,
                       memory_budget=memory_budget, num_workers=num_workers, shuffle_buffer=shuffle_buffer, transform=SimSample(stats))


def split_bytes(cache_root, dataset: str, split: str) -> int:
    """Bytes ``load_split`` holds for the split (float32 vis_feats + meta), from the manifests alone."""
    with open_cache(cache_root, dataset, split, "frame_features") as f, open_cache(cache_root, dataset, split, "rover_meta") as m:
        d = f.spec["arrays"]["cls"]["shape"][-1]
        meta_row = sum(np.dtype(a["dtype"]).itemsize * math.prod(a["shape"]) for n, a in m.spec["arrays"].items() if n in META)
        return int(f.manifest["counts"]["rows"]) * 2 * d * 4 + int(m.manifest["counts"]["rows"]) * meta_row


def choose_mode(mode: str, cache_root, dataset: str, splits, budget: int) -> str:
    """"memory" or "stream": ``mode`` when forced, else memory while both splits fit ``budget``."""
    if mode != "auto":
        return mode
    return "memory" if sum(split_bytes(cache_root, dataset, s) for s in splits) <= budget else "stream"


def _check_stats(stats: dict) -> None:
    if list(stats.get("fields", TELEMETRY_FIELDS)) != list(TELEMETRY_FIELDS):
        raise ValueError(f"telemetry stats are for fields {stats.get('fields')}, expected {list(TELEMETRY_FIELDS)}")


def normalise_telemetry(t: torch.Tensor, stats: dict) -> torch.Tensor:
    """(t - mean) / std with the train split's ``rover_meta`` stats; t [N, 8]."""
    _check_stats(stats)
    return (t - torch.tensor(stats["mean"])) / torch.tensor(stats["std"])
