"""The heatmaps head's data path, caches only: one split in memory as a keyframe table and a pair list.

Caches (joined by episode id with ``cache_specs.join_caches``; an episode missing or quarantined in
any of them is left out and reported):

    covisibility   (dataset)         per ordered keyframe pair: ``target`` [C = G*G + 5], kept_fraction, keyframe_a/_b
    keyframes      (dataset)         per keyframe: frame_index
    frame_features (dataset)         per keyframe (``frames_from: keyframes``, ``store_patch_tokens``): patch_tokens [Hp, Wp, Dd]
    geometry       (tokens_dataset)  per sampled frame: VGGT ``tokens`` [Th, Tw, Dv]; rows matched to the keyframes by frame_index

Frames join by source ``frame_index`` (the keyframes' frame indices must be among the tokens
cache's sampled frames and the frame-features rows); an episode where one is missing is dropped
with the reason. Pairs whose target is all zero (``kept_fraction`` 0: every point of B occluded in
A, so there is no distribution to learn) are skipped and counted (``n_empty``): a cross-entropy
against zero mass is 0 whatever the model says, and such a pair would only dilute the mean.

The keyframe table is held once ([K, ...]) and pairs index into it, rather than copying two token
grids into every one of the K*(K-1) pairs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from navcache.cache_specs import open_cache
from navcache.cache_specs.join import join_caches


def _rows(reader, episodes) -> tuple[np.ndarray, np.ndarray]:
    """(first global row, row count) of each of ``episodes`` in a row="frame" cache."""
    start, length = reader.offsets()
    pos = {e: i for i, e in enumerate(reader.episodes)}
    idx = np.array([pos[e] for e in episodes], np.int64)
    return start[idx], length[idx]


def _gather(reader, name: str, rows: np.ndarray) -> np.ndarray:
    return reader.array(name)[rows] if len(rows) else np.zeros((0, *reader.spec["arrays"][name]["shape"]), np.float32)


def image_size(cache_root, dataset: str, split: str) -> tuple[int, int]:
    """(H, W) of the images the targets' grid covers: the geometry stage's ``image_size``."""
    with open_cache(cache_root, dataset, split, "geometry") as g:
        h, w = g.manifest["identity"]["image_size"]
    return int(h), int(w)


def load_split(cache_root: str | Path, dataset: str, split: str, tokens_dataset: str | None = None, *,
               targets: bool = True, keep_empty: bool = False) -> tuple[dict, dict]:
    """One split in memory.

    Returns (data, info):
      data["vggt"]    f32 [K, Th, Tw, Dv]  VGGT tokens of every keyframe of the kept episodes
      data["dino"]    f32 [K, Hp, Wp, Dd]  DINOv3 patch tokens of the same keyframes
      data["a"], ["b"] i64 [P]             rows of A and B in the keyframe table, per pair
      data["target"]  f32 [P, C]           the covisibility target (sums to 1; all zero for an empty pair)
      info: episodes, per-episode keyframe frame indices, ``pair_episode`` [P], ``keyframe_a/_b`` [P]
            (rows within the episode's keyframes), grid G, image size, counts, join report.

    ``targets=False``: no covisibility cache is read; the pairs are every ordered pair A != B of
    each episode's keyframes, A-major (the covisibility stage's order), and there is no "target"
    (G, C then come from nothing: info["grid"] is None). ``keep_empty``: keep all-zero-target pairs
    (``info["nonempty"]`` [P] marks the others); training skips them.
    """
    specs = {"keys": (dataset, "keyframes"), "feats": (dataset, "frame_features"), "tokens": (tokens_dataset or dataset, "geometry")}
    if targets:
        specs = {"covis": (dataset, "covisibility"), **specs}
    readers = {k: open_cache(cache_root, ds, split, spec) for k, (ds, spec) in specs.items()}
    try:
        for name, arr in (("feats", "patch_tokens"), ("tokens", "tokens")):
            if arr not in readers[name].array_names:
                raise ValueError(f"{readers[name].path} has no {arr!r} array: the heatmaps head needs "
                                 + ("frame-features with store_patch_tokens: true" if name == "feats" else "a VGGT geometry with keep_tokens: true"))
        join = join_caches(readers)
        if not len(join):
            raise ValueError(f"{dataset}/{split}: no episode is in every cache the heatmaps head reads\n{join.report}")
        data, info = _assemble(readers, list(join.episodes), keep_empty)
        info |= {"image_size": image_size(cache_root, dataset, split), "join_report": str(join.report)}
        return data, info
    finally:
        for r in readers.values():
            r.close()


def _keyframe_rows(readers: dict, episodes: list[str]) -> tuple[list, list, list, dict]:
    """Per kept episode: (its frame-features rows, its tokens rows, its record) in keyframe order;
    dropped {episode: reason} where a keyframe has no frame-features or tokens row."""
    keys, feats, tokens = readers["keys"], readers["feats"], readers["tokens"]
    k0, kn = _rows(keys, episodes)
    f0, fn = _rows(feats, episodes)
    t0, tn = _rows(tokens, episodes)
    k_frames = keys.array("frame_index").to_numpy()
    f_frames, t_frames = feats.array("frame_index").to_numpy(), tokens.array("frame_index").to_numpy()
    f_rows, t_rows, kept, dropped = [], [], [], {}
    for i, e in enumerate(episodes):
        frames = k_frames[k0[i] : k0[i] + kn[i]]
        f_pos = {int(f): r for r, f in enumerate(f_frames[f0[i] : f0[i] + fn[i]])}
        t_pos = {int(f): r for r, f in enumerate(t_frames[t0[i] : t0[i] + tn[i]])}
        missing = [int(f) for f in frames if int(f) not in f_pos or int(f) not in t_pos]
        if missing:
            dropped[e] = f"keyframes at frames {missing} have no frame-features or tokens row"
            continue
        f_rows.append(np.array([f0[i] + f_pos[int(f)] for f in frames], np.int64))
        t_rows.append(np.array([t0[i] + t_pos[int(f)] for f in frames], np.int64))
        kept.append({"id": e, "index": i, "frames": frames.astype(np.int64).tolist()})
    return f_rows, t_rows, kept, dropped


def _pairs(readers: dict, kept: list[dict], c0, cn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(episode position [P], keyframe_a [P], keyframe_b [P], covisibility rows [P] or None)."""
    if "covis" in readers:
        crows = np.concatenate([np.arange(c0[ep["index"]], c0[ep["index"]] + cn[ep["index"]]) for ep in kept])
        ep = np.concatenate([np.full(cn[ep["index"]], j, np.int64) for j, ep in enumerate(kept)])
        covis = readers["covis"]
        return ep, covis.array("keyframe_a")[crows].astype(np.int64), covis.array("keyframe_b")[crows].astype(np.int64), crows
    eps, ka, kb = [], [], []
    for j, e in enumerate(kept):
        k = len(e["frames"])
        a, b = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
        off = a != b
        eps.append(np.full(int(off.sum()), j, np.int64))
        ka.append(a[off])
        kb.append(b[off])
    return np.concatenate(eps), np.concatenate(ka).astype(np.int64), np.concatenate(kb).astype(np.int64), None


def _assemble(readers: dict, episodes: list[str], keep_empty: bool) -> tuple[dict, dict]:
    f_rows, t_rows, kept, dropped = _keyframe_rows(readers, episodes)
    if not kept:
        raise ValueError(f"every episode was dropped: {dropped}")
    c0, cn = _rows(readers["covis"], episodes) if "covis" in readers else (None, None)
    ep, ka, kb, crows = _pairs(readers, kept, c0, cn)
    base = np.cumsum([0] + [len(e["frames"]) for e in kept])[:-1]
    dino = readers["feats"].array("patch_tokens")[np.concatenate(f_rows)].astype(np.float32)
    vggt = readers["tokens"].array("tokens")[np.concatenate(t_rows)].astype(np.float32)
    data = {"vggt": torch.from_numpy(np.ascontiguousarray(vggt)), "dino": torch.from_numpy(np.ascontiguousarray(dino)),
            "a": torch.from_numpy(ka + base[ep]), "b": torch.from_numpy(kb + base[ep])}
    keep = np.ones(len(ep), bool)
    grid = C = None
    if crows is not None:
        target = readers["covis"].array("target")[crows].astype(np.float32)
        data["target"] = torch.from_numpy(target)
        C = int(target.shape[1])
        grid = int(round((C - 5) ** 0.5))
        keep = target.sum(-1) > 0.5  # kept_fraction 0: an all-zero target
    nonempty = keep.copy()
    if not keep_empty:
        data = {k: (v[torch.from_numpy(keep)] if k in ("a", "b", "target") else v) for k, v in data.items()}
        ep, ka, kb, nonempty = ep[keep], ka[keep], kb[keep], nonempty[keep]
    info = {"episodes": [e["id"] for e in kept], "per_episode": [{"id": e["id"], "frames": e["frames"]} for e in kept],
            "grid": grid, "C": C, "n_keyframes": int(len(vggt)), "n_pairs": int(keep.sum()), "n_empty": int((~keep).sum()),
            "pair_episode": ep, "keyframe_a": ka, "keyframe_b": kb, "nonempty": nonempty,
            "vggt_shape": list(vggt.shape[1:]), "dino_shape": list(dino.shape[1:]), "dropped": dropped}
    return data, info
