"""Inference with a trained SIM v0 heads checkpoint: rebuild the model, predict a split's caches to JSONL.

    from navcache.heads.sim_heads.predict import load_for_inference, predict_split
    model, md = load_for_inference("runs/sim_heads/checkpoints/best.pt")
    summary = predict_split("runs/sim_heads/checkpoints/best.pt", "navcache_cache", "demo_rover", "val", "val.jsonl")

A checkpoint holds only the trainable weights; the frozen LLM is rebuilt from ``metadata.llm``: the
tiny random-init GPT-2 is re-created from its recorded seed and sizes (or loaded from its recorded
folder when that folder still holds exactly those weights), a real LLM is loaded from its recorded
local path. Telemetry is always normalised with the TRAIN stats stored in the checkpoint
(``metadata.telemetry_norm``), never with the predicted split's own: the model only ever saw inputs
scaled by the train stats.
"""
from __future__ import annotations

import json
import tempfile
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from navcache.cache_specs.labels import LABELS
from navcache.cache_specs.layout import atomic_write_bytes
from navcache.heads.checkpoint import read_head_checkpoint
from navcache.heads.train_loop import load_trainable

from .data import load_split, normalise_telemetry
from .model import (
    RANDOM_GPT2,
    RANDOM_INIT_MARKER,
    SimV0Model,
    load_frozen_llm,
    make_random_gpt2,
    random_gpt2_marker,
)


def read_checkpoint(path: str | Path) -> dict:
    """The whole checkpoint dict (``weights_only=True``); ValueError unless it is a sim-heads one.

    For an export folder (``<out_dir>/export``): {"metadata", "epoch"} from its config.json, no weights
    (``load_for_inference`` reads those), so that ``navcache predict --checkpoint`` takes either."""
    if Path(path).is_dir():
        from .export import export_metadata

        md = export_metadata(path)
        return {"metadata": md, "epoch": md["checkpoint"]["epoch"]}
    return read_head_checkpoint(path, "sim-heads")


def _frozen_llm(info: dict) -> torch.nn.Module:
    """The frozen LLM a checkpoint was trained on, from its ``metadata.llm``."""
    if not info.get("random_init"):
        path = Path(info["path"])
        if not path.exists():
            raise FileNotFoundError(f"the checkpoint's frozen LLM folder {path} does not exist (metadata.llm.path)")
        return load_frozen_llm(path)
    arch = {k: int(info.get(k, v)) for k, v in RANDOM_GPT2.items()}
    seed = int(info["seed"])
    recorded = Path(info.get("path", ""))
    marker = recorded / RANDOM_INIT_MARKER
    if info.get("path") and marker.is_file() and json.loads(marker.read_text()) == random_gpt2_marker(seed, arch):
        return load_frozen_llm(recorded)
    # Re-create it the way training did (same function, then from_pretrained), so the weights and
    # the loaded config match bit for bit; a temporary folder, never the training run's.
    with tempfile.TemporaryDirectory(prefix="navcache_gpt2_") as tmp:
        return load_frozen_llm(make_random_gpt2(Path(tmp) / "llm", seed=seed, arch=arch))


def build_model(llm_info: dict, dv: int, F_frames: int, K: int, d: int, telemetry_hidden: int, dropout: float) -> SimV0Model:
    """A SimV0Model around the frozen LLM ``llm_info`` describes, its trainable weights still to be loaded."""
    llm = _frozen_llm(llm_info)
    if int(llm.config.hidden_size) != d:
        raise ValueError(f"frozen LLM hidden size {llm.config.hidden_size} != the trained model's d={d}")
    # SimV0Model draws its init from the global RNG; the weights are overwritten next, so keep the
    # caller's RNG stream as it was (predicting must not change a later seeded run).
    with torch.random.fork_rng(devices=[]):
        return SimV0Model(llm, dv, F_frames, K, telemetry_hidden=telemetry_hidden, dropout=dropout)


def load_for_inference(checkpoint_path: str | Path, device: str | torch.device = "cpu") -> tuple[SimV0Model, dict]:
    """(model in eval mode on ``device``, metadata): the checkpoint's ``metadata`` plus
    ``checkpoint`` = {"path", "epoch", "val"} (the val metrics recorded at that epoch).

    ``checkpoint_path`` may also be an export folder (``<out_dir>/export``): then ``export.load_export``."""
    if Path(checkpoint_path).is_dir():  # an export folder (``heads.sim_heads.export``)
        from .export import load_export

        return load_export(checkpoint_path, device)
    ckpt = read_checkpoint(checkpoint_path)
    md = dict(ckpt["metadata"])
    cfg = md.get("config", {})
    model = build_model(md["llm"], int(md["dv"]), int(md["F"]), int(md["K"]), int(md["d"]), int(cfg.get("telemetry_hidden", 64)),
                        float(cfg.get("dropout", 0.0)))
    load_trainable(model, ckpt)
    md["checkpoint"] = {"path": str(checkpoint_path), "epoch": ckpt.get("epoch"), "val": (ckpt.get("metrics") or {}).get("val")}
    return model.to(device).eval(), md


def _autocast(model: SimV0Model, md: dict):
    """bf16 autocast on CUDA when the run trained (and so evaluated) with it, as ``run_loop`` does."""
    dev = next(p for p in model.parameters() if p.requires_grad).device
    amp = md.get("config", {}).get("loop", {}).get("amp", "auto")
    return torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" and amp == "auto" else nullcontext()


def predict_arrays(model: SimV0Model, md: dict, vis_feats: torch.Tensor, telemetry: torch.Tensor, ids: list[str] | None = None,
                   batch_size: int = 256) -> list[dict]:
    """``model.predict_json`` over a whole split in batches; vis_feats [N, F, dv], telemetry [N, 8] normalised."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out: list[dict] = []
    with _autocast(model, md):
        for i in range(0, len(vis_feats), batch_size):
            b = {"vis_feats": vis_feats[i : i + batch_size], "telemetry": telemetry[i : i + batch_size]}
            if ids is not None:
                b["id"] = ids[i : i + batch_size]
            out.extend(model.predict_json(b))
    return out


def predicted_ids(preds: list[dict], head: str) -> np.ndarray:
    """int64 [N]: the class ids of the predicted labels of ``head``."""
    index = {name: i for i, name in enumerate(LABELS[head])}
    return np.array([index[p[head]["label"]] for p in preds], np.int64)


def predict_split(checkpoint: str | Path, cache_root: str | Path, dataset: str, split: str, out_jsonl: str | Path,
                  batch_size: int = 256, device: str | torch.device = "cpu") -> dict:
    """Predict every clip of a split's caches (the trainer's data path), one JSONL line per clip with "id".

    Returns {"checkpoint", "epoch", "dataset", "split", "n", "dropped", "out", "accuracy": {head: acc}}.
    ``accuracy`` scores the clips whose cached label id is a valid class (None for a head with none).
    """
    model, md = load_for_inference(checkpoint, device)
    arrays, info = load_split(cache_root, dataset, split)
    if (info["F"], info["dv"]) != (int(md["F"]), int(md["dv"])):
        raise ValueError(f"{dataset}/{split} caches have (F, dv) = {(info['F'], info['dv'])}, the checkpoint was trained on {(md['F'], md['dv'])}")
    telemetry = normalise_telemetry(arrays["telemetry"], md["telemetry_norm"])  # TRAIN stats, never this split's
    preds = predict_arrays(model, md, arrays["vis_feats"], telemetry, info["episodes"], batch_size)
    accuracy: dict[str, float | None] = {}
    for h, names in LABELS.items():
        y = arrays[h].numpy()
        ok = (y >= 0) & (y < len(names))
        accuracy[h] = float((predicted_ids(preds, h)[ok] == y[ok]).mean()) if ok.any() else None
    out = Path(out_jsonl)
    atomic_write_bytes(out, "".join(json.dumps(p) + "\n" for p in preds).encode())  # never a half-written file
    return {"checkpoint": str(checkpoint), "epoch": md["checkpoint"]["epoch"], "dataset": dataset, "split": split, "n": len(preds),
            "dropped": info["dropped"], "out": str(out), "accuracy": accuracy}
