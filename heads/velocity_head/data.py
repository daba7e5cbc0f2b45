"""The velocity head's data path, caches only: ``frame_features`` + ``velocity`` of each split, in memory.

Per sample (joined by id with ``cache_specs.join_caches``; a sample quarantined or absent in either
cache is left out and the drops are reported):

    patches [N, P, D] f32   the frames' patch features: the pooled G x G grid (P = F * G * G) or, with
                            ``features: tokens`` (or ``auto`` when the cache stores them), the full
                            patch tokens (P = F * Hp * Wp); every frame of a sample is kept (F >= 1)
    goal    [N, 2] f32      the goal point in pixels (velocity cache)
    action  [N, 2] f32      OpenVLA's action (v_x, v_y), raw units
    v       [N, H, 2] f32, v_valid [N, H] bool   the whole path's velocities and pad mask

Everything a split holds is small for VAMOS-sized data with the pooled grid (N * P * D * 4 bytes:
1M samples of a 4 x 4 grid of 2176-d fused features is 139 GB, so real runs use pool_grid 2 or a
subset); the head keeps it in memory like gru-motion, no streaming path.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from navcache.cache_specs import open_cache
from navcache.cache_specs.join import join_caches

CACHES = {"feats": "frame_features", "vel": "velocity"}
VELOCITY = ("goal", "action", "v", "v_valid")


def feature_kind(reader, features: str) -> str:
    """"pooled" or "tokens" for a frame_features cache, from the config's ``features`` ("auto" | "pooled" | "tokens")."""
    has_tokens = "patch_tokens" in reader.spec["arrays"]
    if features == "tokens" and not has_tokens:
        raise ValueError(f"features: tokens, but {reader.path} stores no patch_tokens (stages.frame-features.store_patch_tokens: true)")
    return "tokens" if features == "tokens" or (features == "auto" and has_tokens) else "pooled"


def _frame_rows(reader, episodes, lengths: np.ndarray) -> np.ndarray:
    """[N, F] global rows of ``episodes`` in a row="frame" cache (every sample must have F frames)."""
    F = int(lengths[0])
    if not (lengths == F).all():
        raise ValueError(f"{reader.path}: samples have different frame counts {sorted(set(lengths.tolist()))}; the head needs a fixed F")
    start, _ = reader.offsets()
    pos = {e: i for i, e in enumerate(reader.episodes)}
    return start[[pos[e] for e in episodes]][:, None] + np.arange(F)[None, :]


def load_split(cache_root: str | Path, dataset: str, split: str, features: str = "auto") -> tuple[dict[str, torch.Tensor], dict]:
    """({"patches" [N, P, D], "goal" [N, 2], "action" [N, 2], "v" [N, H, 2], "v_valid" [N, H]}, info) of a split,
    in frame_features storage order. info: {"episodes", "n", "kind", "F", "P", "D", "H", "dt", "path", "dropped", "join_report"}."""
    readers = {k: open_cache(cache_root, dataset, split, spec) for k, spec in CACHES.items()}
    try:
        join = join_caches(readers)
        if not len(join):
            raise ValueError(f"{dataset}/{split}: no sample has both frame features and velocity\n{join.report}")
        feats, vel = readers["feats"], readers["vel"]
        kind = feature_kind(feats, features)
        rows = _frame_rows(feats, join.episodes, join.slices["feats"].length)  # [N, F]
        name = "patch_tokens" if kind == "tokens" else "patch_pooled"
        x = feats.array(name)[rows.reshape(-1)].astype(np.float32)  # [N*F, h, w, D]
        N, F, D = len(join), rows.shape[1], x.shape[-1]
        patches = x.reshape(N, -1, D)  # [N, F*h*w, D]
        vpos = {e: i for i, e in enumerate(vel.episodes)}
        vrows = np.array([vpos[e] for e in join.episodes], np.int64)
        arrays = {"patches": torch.from_numpy(np.ascontiguousarray(patches)),
                  **{n: torch.from_numpy(np.ascontiguousarray(vel.array(n)[vrows])) for n in VELOCITY}}
        settings = vel.manifest.get("identity", {}).get("settings", {})
        info = {"episodes": list(join.episodes), "n": N, "kind": kind, "F": F, "P": int(patches.shape[1]), "D": int(D),
                "H": int(arrays["v"].shape[1]), "dt": settings.get("dt"), "path": str(vel.path),
                "dropped": join.report.n_dropped.get("feats", 0), "join_report": str(join.report)}
    finally:
        for r in readers.values():
            r.close()
    return arrays, info
