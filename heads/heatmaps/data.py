"""The heatmaps head's data path, caches only: one split in memory as a keyframe table and a pair list.

Caches (joined by episode id with ``cache_specs.join_caches``; an episode missing or quarantined in
any of them is left out and reported):

    covisibility   (dataset)         per ordered keyframe pair: ``target`` [C = G*G + 5], kept_fraction, keyframe_a/_b
    keyframes      (dataset)         per keyframe: frame_index
    frame_features (dataset)         per keyframe (``frames_from: keyframes``, ``store_patch_tokens``): patch_tokens [Hp, Wp, Dd]
    geometry       (tokens_dataset)  per sampled frame: VGGT ``tokens`` [Th, Tw, Dv]; rows matched to the keyframes by frame_index
    geometry       (dataset)         per sampled frame: ``extrinsic``, ``depth``, ``depth_conf``: the camera cues
                                     (``pair_pose``: B's camera in A's, in units of A's median depth)

Frames join by source ``frame_index`` (the keyframes' frame indices must be among the tokens
cache's sampled frames and the frame-features rows); an episode where one is missing is dropped
with the reason. Pairs whose target is all zero (``kept_fraction`` 0: every point of B occluded in
A, so there is no distribution to learn) are skipped and counted (``n_empty``): a cross-entropy
against zero mass is 0 whatever the model says, and such a pair would only dilute the mean.

Camera cues: the relative pose of B in A's camera is what decides whether B's content lies ahead,
to a side or behind; the tokens only say it through appearance, which a few dozen tours do not
teach. It comes from the same geometry cache the targets were computed from (VGGT's cameras on
real videos, the simulator's in the demo), scaled by A's median depth so VGGT's normalised scale
and metric scale read alike.

The keyframe table is held once ([K, ...]) and pairs index into it, rather than copying two token
grids into every one of the K*(K-1) pairs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from navcache.cache_specs import open_cache
from navcache.cache_specs.join import join_caches


#: the per-pair entries of ``load_split``'s data (the rest are per-keyframe tables)
PAIR_KEYS = ("a", "b", "pose", "target")


def _rows(reader, episodes) -> tuple[np.ndarray, np.ndarray]:
    """(first global row, row count) of each of ``episodes`` in a row="frame" cache."""
    start, length = reader.offsets()
    pos = {e: i for i, e in enumerate(reader.episodes)}
    idx = np.array([pos[e] for e in episodes], np.int64)
    return start[idx], length[idx]


def _gather(reader, name: str, rows: np.ndarray) -> np.ndarray:
    return reader.array(name)[rows] if len(rows) else np.zeros((0, *reader.spec["arrays"][name]["shape"]), np.float32)


#: per pair: R_rel = R_A R_B^T (9, row-major), B's camera centre in A's camera / A's median depth
#: (3), that distance (1), B's median depth / A's (1)
N_POSE = 14


def pair_pose(ext: np.ndarray, scale: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32 [P, N_POSE] camera cues of the pairs (a [P], b [P]) of keyframes with camera-from-world
    ``ext`` [K, 3, 4] and median depth ``scale`` [K] (> 0)."""
    R, t = ext[..., :3].astype(np.float64), ext[..., 3].astype(np.float64)
    centre = -np.einsum("kji,kj->ki", R, t)  # C = -R^T t, [K, 3]
    r_rel = R[a] @ np.transpose(R[b], (0, 2, 1))
    c_in_a = (np.einsum("pij,pj->pi", R[a], centre[b]) + t[a]) / scale[a, None]
    dist = np.linalg.norm(c_in_a, axis=1, keepdims=True)
    ratio = (scale[b] / scale[a])[:, None]
    return np.concatenate([r_rel.reshape(-1, 9), c_in_a, dist, ratio], 1).astype(np.float32)


def median_depth(depth: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """[K] median of each keyframe's confident depths (conf > 0, depth > 0); 1 where it has none."""
    d = depth.astype(np.float32).reshape(len(depth), -1)
    ok = (conf.astype(np.float32).reshape(len(conf), -1) > 0) & (d > 0) & np.isfinite(d)
    med = np.nanmedian(np.where(ok, d, np.nan), axis=1) if d.size else np.zeros(len(d))
    return np.where(np.isfinite(med) & (med > 0), med, 1.0).astype(np.float64)


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
      data["pose"]    f32 [P, N_POSE]      camera cues of each pair (``pair_pose``)
      data["target"]  f32 [P, C]           the covisibility target (sums to 1; all zero for an empty pair)
      info: episodes, per-episode keyframe frame indices, ``pair_episode`` [P], ``keyframe_a/_b`` [P]
            (rows within the episode's keyframes), grid G, image size, counts, join report.

    ``targets=False``: no covisibility cache is read; the pairs are every ordered pair A != B of
    each episode's keyframes, A-major (the covisibility stage's order), and there is no "target"
    (G, C then come from nothing: info["grid"] is None). ``keep_empty``: keep all-zero-target pairs
    (``info["nonempty"]`` [P] marks the others); training skips them.
    """
    specs = {"keys": (dataset, "keyframes"), "feats": (dataset, "frame_features"), "tokens": (tokens_dataset or dataset, "geometry"),
             "geo": (dataset, "geometry")}
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


def _keyframe_rows(readers: dict, episodes: list[str]) -> tuple[dict[str, list], list, dict]:
    """Per kept episode, in keyframe order: its rows in the frame-features, tokens and geometry
    caches and its keyframes rows ({"feats", "tokens", "geo", "keys"}: lists of int64 [K_e]) and its record; dropped
    {episode: reason} where a keyframe has no row in one of them."""
    keys = readers["keys"]
    k0, kn = _rows(keys, episodes)
    k_frames = keys.array("frame_index").to_numpy()
    starts = {n: _rows(readers[n], episodes) for n in ("feats", "tokens", "geo")}
    frames_of = {n: readers[n].array("frame_index").to_numpy() for n in starts}
    rows, kept, dropped = {n: [] for n in starts}, [], {}
    for i, e in enumerate(episodes):
        frames = [int(f) for f in k_frames[k0[i] : k0[i] + kn[i]]]
        pos = {n: {int(f): r for r, f in enumerate(frames_of[n][s0[i] : s0[i] + sn[i]])} for n, (s0, sn) in starts.items()}
        missing = [f for f in frames if any(f not in p for p in pos.values())]
        if missing:
            dropped[e] = f"keyframes at frames {missing} have no frame-features, tokens or geometry row"
            continue
        for n, (s0, _) in starts.items():
            rows[n].append(np.array([s0[i] + pos[n][f] for f in frames], np.int64))
        rows.setdefault("keys", []).append(np.arange(k0[i], k0[i] + kn[i], dtype=np.int64))
        kept.append({"id": e, "index": i, "frames": frames})
    return rows, kept, dropped


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


def _keyframe_geometry(readers: dict, rows: dict, ext: np.ndarray, base: np.ndarray, kept: list) -> list[dict[str, np.ndarray]]:
    """Per kept episode, for the pictures and ``<video>_geometry_info.npz``: its keyframes'
    extrinsic [K, 3, 4], intrinsic [K, 3, 3], depth [K, h, w] (the strided map), and the
    keyframes cache's position, pick_order, gain, coverage [K]."""
    geo, keys = readers["geo"], readers["keys"]
    intr, depth = geo.array("intrinsic")[rows["geo"]], geo.array("depth")[rows["geo"]]
    per_key = {n: keys.array(n)[rows["keys"]] for n in ("position", "pick_order", "gain", "coverage")}
    out = []
    for j, e in enumerate(kept):
        sl = slice(int(base[j]), int(base[j]) + len(e["frames"]))
        out.append({"extrinsic": ext[sl], "intrinsic": intr[sl], "depth": depth[sl], **{n: v[sl] for n, v in per_key.items()}})
    return out


def _assemble(readers: dict, episodes: list[str], keep_empty: bool) -> tuple[dict, dict]:
    rows, kept, dropped = _keyframe_rows(readers, episodes)
    if not kept:
        raise ValueError(f"every episode was dropped: {dropped}")
    c0, cn = _rows(readers["covis"], episodes) if "covis" in readers else (None, None)
    ep, ka, kb, crows = _pairs(readers, kept, c0, cn)
    base = np.cumsum([0] + [len(e["frames"]) for e in kept])[:-1]
    rows = {n: np.concatenate(r) for n, r in rows.items()}
    dino = readers["feats"].array("patch_tokens")[rows["feats"]].astype(np.float32)
    vggt = readers["tokens"].array("tokens")[rows["tokens"]].astype(np.float32)
    geo = readers["geo"]
    ext = geo.array("extrinsic")[rows["geo"]]
    scale = median_depth(geo.array("depth")[rows["geo"]], geo.array("depth_conf")[rows["geo"]])
    a, b = ka + base[ep], kb + base[ep]
    data = {"vggt": torch.from_numpy(np.ascontiguousarray(vggt)), "dino": torch.from_numpy(np.ascontiguousarray(dino)),
            "a": torch.from_numpy(a), "b": torch.from_numpy(b), "pose": torch.from_numpy(pair_pose(ext, scale, a, b))}
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
        data = {k: (v[torch.from_numpy(keep)] if k in PAIR_KEYS else v) for k, v in data.items()}
        ep, ka, kb, nonempty = ep[keep], ka[keep], kb[keep], nonempty[keep]
    info = {"episodes": [e["id"] for e in kept], "per_episode": [{"id": e["id"], "frames": e["frames"]} for e in kept],
            "keyframe_geometry": _keyframe_geometry(readers, rows, ext, base, kept),
            "grid": grid, "C": C, "n_keyframes": int(len(vggt)), "n_pairs": int(keep.sum()), "n_empty": int((~keep).sum()),
            "pair_episode": ep, "keyframe_a": ka, "keyframe_b": kb, "nonempty": nonempty,
            "vggt_shape": list(vggt.shape[1:]), "dino_shape": list(dino.shape[1:]), "dropped": dropped}
    return data, info
