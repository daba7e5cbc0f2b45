"""``navcache predict flow-expert``: a sampled action chunk per frame of a split, unnormalised, to JSONL.

    {"id": "episode_000024", "frame_index": 0, "actions": [[...A] x H], "is_pad": [H bools]}

Chunks are sampled from noise seeded by the run's ``eval_seed`` (the same chunks as its evaluation
on that split); state and context are read and normalised exactly as in training, with the
checkpoint's norm stats. The summary holds the MSE against the dataset's chunks and both baselines.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from navcache.cache_specs.layout import atomic_write_bytes

from .data import load_split
from .export import FlowExpertPolicy, model_from_checkpoint, read_checkpoint
from .train import score_chunks, sample_normalised


def predict_split(checkpoint: str | Path, cache_root: str | Path, dataset: str, split: str, out_jsonl: str | Path,
                  batch_size: int = 256, device: str | torch.device = "cpu") -> dict:
    """Write one chunk per frame of ``dataset``/``split`` to ``out_jsonl`` (atomically); returns the summary."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ckpt = read_checkpoint(checkpoint)
    model, cfg, md = model_from_checkpoint(ckpt)
    cfg = dataclasses.replace(cfg, cache_root=str(cache_root), dataset=dataset,
                              context_datasets=tuple(dataset if d == cfg.dataset else d for d in cfg.context_datasets))
    policy = FlowExpertPolicy(model.to(device), cfg, md["norm_stats"], int(md["state_dim"]), int(md["action_dim"]))
    arrays, info = load_split(cfg, split, md["norm_stats"])
    mean_action = torch.as_tensor(md["mean_action"], dtype=torch.float32)  # the train split's, as in training
    gen = torch.Generator().manual_seed(cfg.eval_seed)
    lines, sums = [], {"sq": 0.0, "sq_mean": 0.0, "sq_repeat": 0.0, "count": 0}
    for i in range(0, len(arrays["state"]), batch_size):
        b = {k: v[i:i + batch_size].to(device) for k, v in arrays.items()}
        pred = policy.actions_norm.unnormalise(sample_normalised(policy.model, b["context"], b["state"], gen, cfg.num_steps)[..., :policy.action_dim]).cpu()
        s = score_chunks(pred, b["actions_raw"].cpu(), b["is_pad"].cpu(), b["prev_action"].cpu(), mean_action)
        sums = {k: sums[k] + s[k] for k in sums}
        for j in range(len(pred)):
            k = i + j
            lines.append(json.dumps({"id": info["ids"][k], "frame_index": info["frame_index"][k], "actions": pred[j].tolist(),
                                     "is_pad": arrays["is_pad"][k].tolist()}, separators=(",", ":")) + "\n")
    out = Path(out_jsonl)
    atomic_write_bytes(out, "".join(lines).encode())
    c = max(sums["count"], 1)
    return {"checkpoint": str(checkpoint), "epoch": ckpt.get("epoch"), "dataset": dataset, "split": split, "n": info["n"],
            "out": str(out), "accuracy": {"mse": sums["sq"] / c, "baseline_mean_mse": sums["sq_mean"] / c,
                                          "baseline_repeat_mse": sums["sq_repeat"] / c}}
