"""Inference with a trained heatmaps checkpoint: per episode, where each keyframe's content appears in every other's view.

    from navcache.heads.heatmaps import predict_split
    summary = predict_split("runs/heatmaps/checkpoints/best.pt", "navcache_cache", "demo_heatmaps", "val", "out/")

Per episode (video) ``predict_episode`` gives::

    selected_indices  int64 [K]        source frame indices of the keyframes
    pairs             int64 [P, 2]     (keyframe_a, keyframe_b): rows of the episode's keyframes, A-major
    probs             f32 [P, C]       predicted distribution over the G*G grid + 5 ring cells
    heatmaps          f32 [P, H, W]    the convex-upsampled in-view probability per pixel of A's image
    targets           f32 [P, C]       the covisibility targets (only when the split has that cache)
    metrics           {ce, kl, top1_hit, ring_dir, base_*} over the pairs with a non-empty target

``predict_split`` writes the seed's files per episode into ``out`` (atomically, through
``cache_specs.covisibility_pictures``): ``<video>_heatmaps.png`` (every pair, prediction | ground
truth side by side), ``<video>_heatmap_<k>.png``, ``<video>_selected_indices.npy``,
``<video>_geometry_info.npz`` (keyframe cameras, intrinsics, gains, coverage) and
``<video>_summary.json`` (keyframes, pairs, metrics against the ground truth). The frozen LLM is rebuilt from ``metadata.llm``: the random-init Qwen2 from
its recorded seed and sizes, a real one from its id or folder.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from navcache.heads.checkpoint import read_head_checkpoint
from navcache.heads.train_loop import load_trainable

from .configuration import RANDOM_QWEN2
from .data import load_split
from .model import HeatmapModel, load_frozen_llm, make_random_qwen2
from .train import build_model, distribution_metrics


def read_checkpoint(path: str | Path) -> dict:
    """The whole checkpoint dict (``weights_only=True``); ValueError unless it is a heatmaps one."""
    return read_head_checkpoint(path, "heatmaps")


def _frozen_llm(info: dict | None):
    if info is None:
        return None
    if info.get("random_init"):
        if info.get("name") != RANDOM_QWEN2:
            raise ValueError(f"metadata.llm names an unknown random-init LLM {info.get('name')!r}")
        return make_random_qwen2(int(info["seed"]), dict(info["arch"]))
    return load_frozen_llm(info["name"])


def load_for_inference(checkpoint_path: str | Path, device: str | torch.device = "cpu") -> tuple[HeatmapModel, dict]:
    """(model in eval mode on ``device``, metadata + ``checkpoint`` = {"path", "epoch", "val"})."""
    ckpt = read_checkpoint(checkpoint_path)
    md = dict(ckpt["metadata"])
    with torch.random.fork_rng(devices=[]):  # the init draws are overwritten next: leave the caller's RNG alone
        model = build_model(md, _frozen_llm(md.get("llm")))
    load_trainable(model, ckpt)
    md["checkpoint"] = {"path": str(checkpoint_path), "epoch": ckpt.get("epoch"), "val": (ckpt.get("metrics") or {}).get("val")}
    return model.to(device).eval(), md


@torch.no_grad()
def predict_pairs(model: HeatmapModel, md: dict, data: dict, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs [P, C], heatmaps [P, H, W]) of every pair in ``data`` (``load_split``'s tables and pairs)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = next(model.parameters()).device
    amp = md.get("config", {}).get("loop", {}).get("amp", "auto")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" and amp == "auto" else nullcontext()
    probs, maps = [], []
    with autocast:
        for i in range(0, len(data["a"]), batch_size):
            a, b = data["a"][i : i + batch_size], data["b"][i : i + batch_size]
            pose = data["pose"][i : i + batch_size].to(dev) if model.n_pose else None
            out = model.from_tokens(*(data[k][j].to(dev) for j in (a, b) for k in ("vggt", "dino")), pose)
            probs.append(out["logits"].float().softmax(-1).cpu())
            maps.append(model.heatmap(out).float().cpu())
    return torch.cat(probs), torch.cat(maps)


def episode_metrics(probs: torch.Tensor, targets: torch.Tensor, mean_target: torch.Tensor) -> dict[str, float]:
    """The trainer's metrics (model and baselines) over one episode's pairs with a non-empty target."""
    keep = targets.sum(-1) > 0.5
    if not keep.any():
        return {"n": 0}
    n, C = int(keep.sum()), targets.shape[1]
    t = targets[keep]
    m = distribution_metrics(probs[keep].clamp_min(1e-12).log(), t)
    m |= distribution_metrics(torch.full((n, C), -float(np.log(C))), t, "base_uniform_")
    mean = mean_target.clamp_min(1e-6)
    m |= distribution_metrics((mean / mean.sum()).log().expand(n, C), t, "base_mean_")
    return {**m, "n": n}


def _nan_to_none(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in d.items()}


def depth_images(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [K, H, W, 3] grey pictures of keyframes from their cached depth maps [K, h, w] (near =
    bright), at the geometry's image size: what the pictures are drawn on when no source frames
    are given, since the caches hold geometry, not pixels."""
    d = torch.from_numpy(np.nan_to_num(depth.astype(np.float32), nan=0.0, posinf=0.0))
    inv = torch.where(d > 0, 1.0 / d.clamp_min(1e-6), torch.zeros_like(d))
    top = torch.quantile(inv.flatten(1), 0.98, dim=1).clamp_min(1e-6)[:, None, None]
    grey = (inv / top).clamp(0, 1) * 200 + 30 * (d > 0)  # no depth: black
    grey = torch.nn.functional.interpolate(grey[:, None], size=tuple(size), mode="nearest")[:, 0]
    return grey.round().clamp(0, 255).to(torch.uint8)[..., None].expand(-1, -1, -1, 3).numpy().copy()


def _write_pictures(out: Path, video: str, episode: dict, md: dict, frames: np.ndarray, geometry: dict) -> dict[str, Path]:
    """``<video>_heatmaps.png``, ``<video>_heatmap_<k>.png``, ``<video>_selected_indices.npy``,
    ``<video>_geometry_info.npz`` and ``<video>_summary.json`` (last) through
    ``cache_specs.covisibility_pictures.write_episode_outputs``."""
    from navcache.cache_specs.covisibility_pictures import write_episode_outputs

    summary = {"video": video, "keyframes": episode["selected_indices"].tolist(), "pairs": episode["pairs"].tolist(),
               "grid": md["grid"], "image_size": list(md["image_size"]), "ring": ["left", "right", "above", "below", "behind"],
               "metrics": episode["metrics"], "llm": md.get("llm"), "checkpoint": md["checkpoint"]["path"],
               "pictures_on": episode["pictures_on"]}
    info = {k: v for k, v in geometry.items() if k != "depth"} | {"frame_index": episode["selected_indices"]}
    return write_episode_outputs(out, video, frames=frames, selected_indices=episode["selected_indices"], grid=int(md["grid"]),
                                 pairs=episode["pairs"], target=episode["targets"], pred=episode["probs"],
                                 pred_upsampled=episode["heatmaps"], geometry_info=info, summary=summary)


def predict_split(checkpoint: str | Path, cache_root: str | Path, dataset: str, split: str, out: str | Path,
                  batch_size: int = 64, device: str | torch.device = "cpu", episodes: list[str] | None = None,
                  tokens_dataset: str | None = None, frames: Callable[[str, list[int]], np.ndarray] | None = None) -> dict:
    """Predict every episode (or ``episodes``; an unknown id is a ValueError naming the known ones)
    of a split into the folder ``out``: the seed's files per episode (``_write_pictures``).

    tokens_dataset: where the VGGT tokens are; default the checkpoint's when ``dataset`` is the one it
    trained on, else ``dataset`` itself. Targets and metrics when the split has a covisibility cache.
    frames: ``frames(episode_id, keyframe frame indices)`` -> uint8 [K, H, W, 3], the keyframes as the
    geometry model saw them (the CLI decodes them through the project's source); None: the
    pictures are drawn on the cached depth maps (``depth_images``).
    Returns {"checkpoint", "epoch", "dataset", "split", "n", "out", "episodes": {id: metrics}, "metrics": over their pairs}.
    """
    model, md = load_for_inference(checkpoint, device)
    cfg = md["config"]
    if tokens_dataset is None:
        tokens_dataset = cfg.get("tokens_dataset") if dataset == cfg.get("dataset") else None
    has_targets = (Path(cache_root) / dataset / split / "covisibility" / "manifest.json").exists()
    data, info = load_split(cache_root, dataset, split, tokens_dataset, targets=has_targets, keep_empty=True)
    for key in ("vggt_shape", "dino_shape"):
        if list(info[key]) != list(md[key]):
            raise ValueError(f"{dataset}/{split}: {key} {info[key]} differs from the checkpoint's {md[key]}")
    if has_targets and info["grid"] != md["grid"]:
        raise ValueError(f"{dataset}/{split}: covisibility grid {info['grid']} differs from the checkpoint's {md['grid']}")
    probs, maps = predict_pairs(model, md, data, batch_size)
    mean_target = torch.tensor(md["mean_target"])
    if episodes is not None:
        unknown = sorted(set(episodes) - set(info["episodes"]))
        if unknown:
            raise ValueError(f"{dataset}/{split} has no episode {unknown} (quarantined or unknown); it has {info['episodes']}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_episode = {}
    for j, ep in enumerate(info["per_episode"]):
        if episodes is not None and ep["id"] not in episodes:
            continue
        sel = torch.from_numpy(np.nonzero(info["pair_episode"] == j)[0])
        episode = {"selected_indices": np.asarray(ep["frames"], np.int64),
                   "pairs": np.stack([info["keyframe_a"][sel.numpy()], info["keyframe_b"][sel.numpy()]], 1),
                   "probs": probs[sel].numpy(), "heatmaps": maps[sel].numpy(),
                   "targets": data["target"][sel].numpy() if has_targets else None}
        episode["metrics"] = _nan_to_none(episode_metrics(probs[sel], data["target"][sel], mean_target)) if has_targets else None
        geometry = info["keyframe_geometry"][j]
        images = frames(ep["id"], ep["frames"]) if frames is not None else depth_images(geometry["depth"], md["image_size"])
        episode["pictures_on"] = "frames" if frames is not None else "depth"
        _write_pictures(out, ep["id"], episode, md, images, geometry)
        per_episode[ep["id"]] = episode["metrics"]
    chosen = torch.from_numpy(np.isin(info["pair_episode"], [j for j, ep in enumerate(info["per_episode"]) if ep["id"] in per_episode]))
    overall = _nan_to_none(episode_metrics(probs[chosen], data["target"][chosen], mean_target)) if has_targets else None
    return {"checkpoint": str(checkpoint), "epoch": md["checkpoint"]["epoch"], "dataset": dataset, "split": split,
            "n": len(per_episode), "out": str(out), "episodes": per_episode, "metrics": overall}
