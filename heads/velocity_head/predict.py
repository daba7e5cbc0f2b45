"""Inference with a trained velocity head: one line per sample of a split, unnormalised, as JSONL.

    navcache predict velocity-head --checkpoint runs/velocity_head/checkpoints/best.pt --split val val.jsonl

    {"id": "validation-00000-of-00001:3", "v_x": 0.27, "v_y": -0.01}            # + "chunk": [[v_x, v_y], ...] with chunk

Inputs are normalised and outputs unnormalised with the checkpoint's TRAIN-split reference (goal
mean/std, q01/q99), never the predicted split's. The summary scores the split as the trainer does.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from navcache.cache_specs.layout import atomic_write_bytes
from navcache.heads.checkpoint import read_head_checkpoint
from navcache.heads.train_loop import load_trainable

from .data import load_split
from .train import build_model, model_inputs, score, unnormalise, EVAL_BATCH


def read_checkpoint(path: str | Path) -> dict:
    """The whole checkpoint dict (``weights_only=True``); ValueError unless it is a velocity-head one.
    An export folder gives {"metadata": its metadata} (what ``navcache predict`` reads its defaults from)."""
    if Path(path).is_dir():
        from .export import export_metadata

        return {"metadata": export_metadata(path)[1]}
    return read_head_checkpoint(path, "velocity-head")


def load_for_inference(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode on ``device``, metadata incl. "reference"); ``checkpoint`` may be an export folder."""
    if Path(checkpoint).is_dir():
        from .export import load_export

        return load_export(checkpoint, device)
    ckpt = read_checkpoint(checkpoint)
    md = dict(ckpt["metadata"])
    with torch.random.fork_rng(devices=[]):  # init draws are overwritten next: leave the caller's RNG alone
        model = build_model(md["config"], int(md["D"]), int(md["P"]), int(md["H"]))
    load_trainable(model, ckpt)
    md["checkpoint"] = {"path": str(checkpoint), "epoch": ckpt.get("epoch"), "val": (ckpt.get("metrics") or {}).get("val")}
    return model.to(device).eval(), md


@torch.no_grad()
def predict_split(checkpoint: str | Path, cache_root: str | Path, dataset: str, split: str, out_jsonl: str | Path,
                  batch_size: int = EVAL_BATCH, device: str | torch.device = "cpu") -> dict:
    """Predict every sample of a split's caches to ``out_jsonl`` (atomically).

    Returns {"checkpoint", "epoch", "dataset", "split", "n", "out", "metrics": {l2, mean_l2, goal_l2, ...}}."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model, md = load_for_inference(checkpoint, device)
    arrays, info = load_split(cache_root, dataset, split, md["kind"])
    if (info["P"], info["D"], info["H"]) != (int(md["P"]), int(md["D"]), int(md["H"])):
        raise ValueError(f"{dataset}/{split} caches have (P, D, H) = {(info['P'], info['D'], info['H'])}, "
                         f"the checkpoint was trained on {(md['P'], md['D'], md['H'])}")
    ref = md["reference"]
    arrays = model_inputs(ref, arrays)
    outs: dict[str, list] = {}
    for i in range(0, info["n"], batch_size):
        o = model(arrays["patches"][i : i + batch_size].to(device), arrays["goal_n"][i : i + batch_size].to(device))
        for k, v in o.items():
            outs.setdefault(k, []).append(v.float().cpu())
    out = {k: torch.cat(v) for k, v in outs.items()}
    action = unnormalise(ref, out["action"].numpy())
    chunk = unnormalise(ref, out["chunk"].numpy()) if "chunk" in out else None
    lines = []
    for i, e in enumerate(info["episodes"]):
        rec = {"id": e, "v_x": float(action[i, 0]), "v_y": float(action[i, 1])}
        if chunk is not None:
            rec["chunk"] = chunk[i].tolist()
        lines.append(json.dumps(rec) + "\n")
    path = Path(out_jsonl)
    atomic_write_bytes(path, "".join(lines).encode())  # never a half-written file
    return {"checkpoint": str(checkpoint), "epoch": md["checkpoint"]["epoch"], "dataset": dataset, "split": split, "n": info["n"],
            "out": str(path), "metrics": score(ref, out, arrays)}
