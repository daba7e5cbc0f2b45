"""Inference with a trained gru-motion checkpoint: predicted bins for every episode of a split, as JSONL.

    navcache predict gru-motion --checkpoint runs/gru_motion/checkpoints/best.pt --split val val.jsonl

One line per episode of the split's ``poses`` cache, in cache order::

    {"id": "...", "next_dist": [S ints], "next_yaw": [S ints], "k_dist": [S ints], "k_yaw": [S ints]}

Position t holds the bins the model predicts, from the steps <= t, for step t+1 (``next_*``) and for
step t+k (``k_*``, k from the checkpoint's config); -1 where step t is padding (``step_valid`` false).
The summary scores the (t, target) pairs the trainer scores, so on a split it trained on it
reproduces the trainer's ``acc_*`` metrics for that epoch.
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import torch

from navcache.cache_specs.layout import atomic_write_bytes
from navcache.heads.checkpoint import read_head_checkpoint
from navcache.heads.train_loop import load_trainable

from .data import load_poses_split
from .model import GruMotionModel
from .train import _pairs, _shift

TARGETS = ("next_dist", "next_yaw", "k_dist", "k_yaw")


def read_checkpoint(path: str | Path) -> dict:
    """The whole checkpoint dict (``weights_only=True``); ValueError unless it is a gru-motion one."""
    return read_head_checkpoint(path, "gru-motion")


def load_for_inference(checkpoint_path: str | Path, device: str | torch.device = "cpu") -> tuple[GruMotionModel, dict]:
    """(model in eval mode on ``device``, the checkpoint's metadata plus ``checkpoint`` = {"path", "epoch", "val"})."""
    ckpt = read_checkpoint(checkpoint_path)
    md = dict(ckpt["metadata"])
    c = md["config"]
    with torch.random.fork_rng(devices=[]):  # init draws are overwritten next: leave the caller's RNG alone
        model = GruMotionModel(int(md["n_dist"]), int(md["n_yaw"]), int(c["emb_dim"]), int(c["hidden"]), int(c["layers"]),
                               bool(c["use_deltas"]), float(c["dropout"]), bool(c["predict_deltas"]))
    load_trainable(model, ckpt)
    md["checkpoint"] = {"path": str(checkpoint_path), "epoch": ckpt.get("epoch"), "val": (ckpt.get("metrics") or {}).get("val")}
    return model.to(device).eval(), md


@torch.no_grad()
def predict_arrays(model: GruMotionModel, arrays: dict[str, torch.Tensor], batch_size: int = 1024, amp: str = "auto") -> dict[str, torch.Tensor]:
    """{target: int64 [N, S] predicted bins, -1 at padded steps} for a split's poses arrays [N, S, ...]."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = next(model.parameters()).device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" and amp == "auto" else nullcontext()
    n = len(arrays["step_valid"])
    out = {t: [] for t in TARGETS}
    with autocast:
        for i in range(0, n, batch_size):
            b = {k: v[i : i + batch_size].to(dev) for k, v in arrays.items()}
            logits = model(b["deltas"], b["dist_bins"], b["yaw_bins"], b["step_valid"])
            valid = b["step_valid"].bool()
            for t in TARGETS:
                pred = logits[t].float().argmax(-1)
                out[t].append(torch.where(valid, pred, torch.full_like(pred, -1)).cpu())
    return {t: torch.cat(v) if v else torch.zeros(0, arrays["step_valid"].shape[1], dtype=torch.int64) for t, v in out.items()}


def accuracy(preds: dict[str, torch.Tensor], arrays: dict[str, torch.Tensor], k: int) -> dict[str, float | int]:
    """acc_{next,k}_{dist,yaw} over the pairs the trainer scores (step t and its target step valid), and n_{next,k}."""
    out: dict[str, float | int] = {}
    for name, off in (("next", 1), ("k", k)):
        m = _pairs(arrays["step_valid"], off)
        out[f"n_{name}"] = int(m.sum())
        for kind in ("dist", "yaw"):
            tgt = _shift(arrays[f"{kind}_bins"], off)[m]
            out[f"acc_{name}_{kind}"] = float((preds[f"{name}_{kind}"][m] == tgt).sum()) / max(tgt.numel(), 1)
    return out


def predict_split(checkpoint: str | Path, cache_root: str | Path, dataset: str, split: str, out_jsonl: str | Path,
                  batch_size: int = 1024, device: str | torch.device = "cpu") -> dict:
    """Predict every episode of a split's poses cache to ``out_jsonl`` (atomically).

    Returns {"checkpoint", "epoch", "dataset", "split", "n", "out", "accuracy": {acc_*: float, n_*: int}}.
    """
    model, md = load_for_inference(checkpoint, device)
    arrays, info = load_poses_split(cache_root, dataset, split)
    if (info["dist_edges"], info["yaw_edges"]) != (list(md["dist_edges"]), list(md["yaw_edges"])):
        raise ValueError(f"{dataset}/{split} poses were binned with other edges than the checkpoint's: "
                         f"{info['dist_edges']}, {info['yaw_edges']} vs {md['dist_edges']}, {md['yaw_edges']}")
    preds = predict_arrays(model, arrays, batch_size, md["config"].get("loop", {}).get("amp", "auto"))
    lists = {t: v.tolist() for t, v in preds.items()}
    lines = (json.dumps({"id": e, **{t: lists[t][i] for t in TARGETS}}, separators=(",", ":")) + "\n" for i, e in enumerate(info["episodes"]))
    out = Path(out_jsonl)
    atomic_write_bytes(out, "".join(lines).encode())  # never a half-written file
    return {"checkpoint": str(checkpoint), "epoch": md["checkpoint"]["epoch"], "dataset": dataset, "split": split,
            "n": len(info["episodes"]), "out": str(out), "accuracy": accuracy(preds, arrays, int(md["config"]["k"]))}
