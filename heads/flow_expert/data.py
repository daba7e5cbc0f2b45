"""The flow expert's data path, caches only: ``robot_meta`` (state, action per frame) joined with
per-frame context tokens from any row="frame" cache holding a ``frame_index`` array.

One sample = one frame of ``robot_meta``. Its context is, for each dataset of ``cfg.contexts``,
every array of ``cfg.context_arrays`` of the context cache's row with the same episode id and
``frame_index``, each reshaped to tokens [-1, D] and concatenated (cls [D] -> 1 token, patch_pooled
[G, G, D] -> G*G tokens). A frame without a context row in every context cache (quarantined
episode, frame not sampled) is left out and counted in ``info["dropped"]``.

Action chunks come from ``cache_specs.action_chunks.gather_chunks`` on the whole robot_meta
episodes (offsets 0..H-1, clamped to the episode, ``is_pad`` past its end), before frames are
dropped, so a chunk never depends on which frames have features. State and actions are
normalised with openpi's norm stats (z-score or quantile, ``Normaliser``), then zero-padded to
``max_action_dim``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from navcache.cache_specs import open_cache
from navcache.cache_specs.action_chunks import chunk_offsets, gather_chunks

EPS = 1e-6  # openpi's normalisation epsilon


@dataclass(frozen=True)
class Normaliser:
    """openpi's ``Normalize`` / ``Unnormalize`` (transforms.py) for one key's stats, unpadded dims.

    zscore:   (x - mean) / (std + 1e-6)
    quantile: (x - q01) / (q99 - q01 + 1e-6) * 2 - 1
    """

    kind: str
    stats: dict

    def _ab(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(offset, scale) [dim] with normalised = (x - offset) / scale (quantile: then * 2 - 1)."""
        s = {k: np.asarray(v, np.float64)[:dim] for k, v in self.stats.items() if k in ("mean", "std", "q01", "q99")}
        if self.kind == "zscore":
            return s["mean"], s["std"] + EPS
        if self.kind == "quantile":
            return s["q01"], s["q99"] - s["q01"] + EPS
        raise ValueError(f"normalization must be 'zscore' or 'quantile', got {self.kind!r}")

    def normalise(self, x: np.ndarray) -> np.ndarray:
        off, scale = self._ab(x.shape[-1])
        y = (x - off) / scale
        return (y * 2.0 - 1.0 if self.kind == "quantile" else y).astype(np.float32)

    def unnormalise(self, y: torch.Tensor) -> torch.Tensor:
        off, scale = (torch.as_tensor(a, dtype=torch.float32, device=y.device) for a in self._ab(y.shape[-1]))
        y = y.float()
        return ((y + 1.0) / 2.0 if self.kind == "quantile" else y) * scale + off


def pad_dims(x: np.ndarray, dim: int, what: str) -> np.ndarray:
    """Zero-pad the last axis of ``x`` to ``dim`` (openpi's ``pad_to_dim``)."""
    if x.shape[-1] > dim:
        raise ValueError(f"{what} has {x.shape[-1]} dims, more than max_action_dim = {dim}")
    return np.concatenate([x, np.zeros((*x.shape[:-1], dim - x.shape[-1]), x.dtype)], axis=-1)


def load_norm_stats(cfg, cache_root=None) -> dict:
    """{"state": {...}, "actions": {...}}: ``cfg.norm_stats`` (a norm_stats.json), else computed from
    the train split's robot_meta cache with the head's horizon (``heads.exports.norm_stats``)."""
    if cfg.norm_stats is not None:
        return json.loads(Path(cfg.norm_stats).read_text())["norm_stats"]
    from navcache.cache_specs.layout import cache_dir
    from navcache.heads.exports.norm_stats import norm_stats

    stats, _ = norm_stats(cache_dir(cache_root or cfg.cache_root, cfg.dataset, cfg.splits[0], "robot_meta"), cfg.horizon)
    return stats["norm_stats"]


def _rows_by_frame(reader) -> dict[str, np.ndarray]:
    """{episode id: int64 [max frame + 1] global row of each frame_index, -1 where none}."""
    start, length = reader.offsets()
    frames = np.asarray(reader.array("frame_index")[:], np.int64) if len(reader.episodes) else np.zeros(0, np.int64)
    out = {}
    for e, a, n in zip(reader.episodes, start, length):
        fi = frames[a:a + n]
        rows = np.full(int(fi.max()) + 1 if n else 0, -1, np.int64)
        rows[fi] = np.arange(a, a + n)
        out[e] = rows
    return out


def _context_rows(reader, meta_ids: np.ndarray, meta_frames: np.ndarray) -> np.ndarray:
    """int64 [N] global rows of ``reader`` for each (episode id, frame_index) of robot_meta; -1 where none."""
    table = _rows_by_frame(reader)
    out = np.full(len(meta_ids), -1, np.int64)
    for e in np.unique(meta_ids):
        if e not in table:
            continue
        sel = np.flatnonzero(meta_ids == e)
        fr, rows = meta_frames[sel], table[e]
        inside = fr < len(rows)
        out[sel[inside]] = rows[fr[inside]]
    return out


def _tokens(reader, names, rows: np.ndarray) -> np.ndarray:
    """[n, T, D] float32: each named array's rows reshaped to tokens, concatenated along T."""
    parts = []
    for name in names:
        if name not in reader.array_names:
            raise ValueError(f"{reader.path} has no array {name!r} (context_arrays; arrays: {', '.join(reader.array_names)})")
        a = np.asarray(reader.array(name)[rows], np.float32)
        parts.append(a.reshape(len(rows), -1, a.shape[-1]))
    dims = {p.shape[-1] for p in parts}
    if len(dims) != 1:
        raise ValueError(f"context_arrays {list(names)} of {reader.path} have different last dims {sorted(dims)}")
    return np.concatenate(parts, axis=1)


def load_split(cfg, split: str, stats: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """({"context" [N, T, D] f32, "state" [N, A'] f32 normalised + padded, "actions" [N, H, A'] idem,
    "is_pad" [N, H] bool, "actions_raw" [N, H, A] f32, "prev_action" [N, A] f32 raw (the frame
    before's action; NaN on an episode's first frame)}, info) for ``split``; A' = max_action_dim."""
    with open_cache(cfg.cache_root, cfg.dataset, split, "robot_meta") as meta:
        start, length = meta.offsets()
        ids = np.repeat(np.asarray(meta.episodes, dtype=object), length)
        state, action = meta.load("state").astype(np.float32), meta.load("action").astype(np.float32)
        frames, ep_index = meta.load("frame_index").astype(np.int64), meta.load("episode_index").astype(np.int64)
        path = str(meta.path)
    chunks, is_pad = gather_chunks(action, ep_index, chunk_offsets(cfg.horizon))
    first = np.zeros(len(frames), bool)
    first[start] = True
    prev = np.concatenate([np.full((1, action.shape[1]), np.nan, np.float32), action[:-1]])
    prev[first] = np.nan
    keep = np.ones(len(frames), bool)
    ctx_rows = []
    for ds in cfg.contexts:
        with open_cache(cfg.cache_root, ds, split, cfg.context_cache) as r:
            rows = _context_rows(r, ids, frames)
        ctx_rows.append((ds, rows))
        keep &= rows >= 0
    if not keep.any():
        raise ValueError(f"{cfg.dataset}/{split}: no robot_meta frame has a {cfg.context_cache} row in {list(cfg.contexts)}")
    context = []
    for ds, rows in ctx_rows:
        with open_cache(cfg.cache_root, ds, split, cfg.context_cache) as r:
            context.append(_tokens(r, cfg.context_arrays, rows[keep]))
    if len({c.shape[-1] for c in context}) != 1:
        raise ValueError(f"context caches {list(cfg.contexts)} have different token dims {[c.shape[-1] for c in context]}")
    st_n, act_n = Normaliser(cfg.normalization, stats["state"]), Normaliser(cfg.normalization, stats["actions"])
    A = cfg.max_action_dim
    arrays = {"context": np.concatenate(context, axis=1), "state": pad_dims(st_n.normalise(state[keep]), A, "state"),
              "actions": pad_dims(act_n.normalise(chunks[keep]), A, "action"), "is_pad": is_pad[keep],
              "actions_raw": chunks[keep], "prev_action": prev[keep]}
    info = {"path": path, "n": int(keep.sum()), "dropped": int((~keep).sum()), "ids": ids[keep].tolist(),
            "frame_index": frames[keep].tolist(), "state_dim": int(state.shape[1]), "action_dim": int(action.shape[1]),
            "context_tokens": int(arrays["context"].shape[1]), "context_dim": int(arrays["context"].shape[2])}
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, info
