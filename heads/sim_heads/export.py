"""``export/``: the best checkpoint's trainable weights as ``model.safetensors`` + ``config.json`` + ``labels.json``.

    from navcache.heads.sim_heads import SimV0Model
    model = SimV0Model.from_pretrained("runs/sim_heads/export")      # eval mode, frozen LLM rebuilt
    tel = normalise_telemetry(raw_telemetry, model.export_config["telemetry_norm"])   # the TRAIN stats
    preds = model.predict_json({"vis_feats": vis_feats, "telemetry": tel})          # [B, F, dv], [B, 8]

The frozen LLM is never exported (as in the checkpoints): ``config.json["llm"]`` says how to get it
back, exactly as ``predict.load_for_inference`` does: a local folder, or ``{"random_init": true,
"seed", "arch", "n_layer", "n_head", "n_embd"}`` for the tiny seeded GPT-2 (re-created bit for bit).
The weights are the ones the best checkpoint's metrics were measured on (EMA ones when the run used
EMA). Files are read with safetensors and json only: nothing is unpickled.

The folder is written whole beside ``export/``, then renamed into place (``_commit_dir``).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from navcache.cache_specs.labels import LABELS, TELEMETRY_FIELDS
from navcache.cache_specs.layout import fsync_dir, fsync_tree, private_name, sweep_stale_temporaries
from navcache.heads.checkpoint import trained_keys

from .model import SimV0Model
from .predict import build_model, read_checkpoint

MODEL_FILE, CONFIG_FILE, LABELS_FILE = "model.safetensors", "config.json", "labels.json"
MODEL_TYPE = "navcache-sim-v0-heads"
FORMAT_VERSION = 1  # bump when config.json or the weight names change meaning


def labels_json() -> dict:
    """{head: {"0": name, ...}}: what ``labels.json`` holds."""
    return {h: {str(i): name for i, name in enumerate(v)} for h, v in LABELS.items()}


def export_config(md: dict, checkpoint: str | Path, epoch: int | None, ema: bool) -> dict:
    """config.json from a checkpoint's ``metadata``: everything ``load_export`` needs to rebuild the model."""
    cfg = md.get("config", {})
    llm = dict(md["llm"])
    if not llm.get("random_init") and Path(llm["path"]).exists():
        llm["path"] = str(Path(llm["path"]).resolve())  # the export may be read from another working directory
    return {
        "model_type": MODEL_TYPE, "class": "navcache.heads.sim_heads.SimV0Model", "format_version": FORMAT_VERSION,
        "dv": int(md["dv"]), "F": int(md["F"]), "K": int(md["K"]), "d": int(md["d"]),
        "n_telemetry": len(TELEMETRY_FIELDS), "telemetry_hidden": int(cfg.get("telemetry_hidden", 64)),
        "dropout": float(cfg.get("dropout", 0.0)), "amp": cfg.get("loop", {}).get("amp", "auto"),
        "labels": {h: list(v) for h, v in LABELS.items()}, "telemetry_fields": list(TELEMETRY_FIELDS),
        "telemetry_norm": md["telemetry_norm"], "llm": llm,
        "inputs": {"vis_feats": "f32 [B, F, dv]", "telemetry": "f32 [B, n_telemetry], normalised with telemetry_norm (train split)"},
        "output": "{risk, reason, action}: logits [B, len(labels[head])]",
        "source": {"checkpoint": str(checkpoint), "best_epoch": epoch, "ema": ema, "dataset": cfg.get("dataset"),
                   "cache_root": cfg.get("cache_root"), "splits": cfg.get("splits")},
    }


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, model: SimV0Model | None = None) -> Path:
    """Write ``out_dir`` (e.g. ``<run>/export``) from a sim-heads checkpoint; returns ``out_dir``.

    ``model``: a SimV0Model of the run to check the weights against (saves rebuilding the frozen LLM;
    left unchanged), else one is rebuilt from the checkpoint's metadata.
    """
    from safetensors.torch import save_file

    if Path(checkpoint).is_dir():
        raise ValueError(f"{checkpoint} is a folder: export from a checkpoint file (checkpoints/best.pt)")
    ckpt = read_checkpoint(checkpoint)
    md = ckpt["metadata"]
    if model is None:
        cfg = md.get("config", {})
        model = build_model(md["llm"], int(md["dv"]), int(md["F"]), int(md["K"]), int(md["d"]),
                            int(cfg.get("telemetry_hidden", 64)), float(cfg.get("dropout", 0.0)))
    state = best_weights(ckpt, model)
    config = export_config(md, checkpoint, ckpt.get("epoch"), ema=ckpt.get("ema") is not None)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    # what exports killed mid-write left: their build folders, and (once ``out`` is whole again)
    # an old export set aside by a kill between ``_commit_dir``'s two renames
    sweep_stale_temporaries(out.parent, f".{out.name}.tmp")
    tmp = out.parent / private_name(".", f"{out.name}.tmp")
    tmp.mkdir()
    try:
        save_file(state, str(tmp / MODEL_FILE), metadata={"format": "pt", "model_type": MODEL_TYPE})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / LABELS_FILE).write_text(json.dumps(labels_json(), indent=2) + "\n")
        fsync_tree(tmp)
        _commit_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sweep_stale_temporaries(out.parent, f".{out.name}.old")
    return out


def best_weights(ckpt: dict, model: SimV0Model) -> dict[str, torch.Tensor]:
    """The weights ``load_trainable(model, ckpt, prefer_ema=True)`` would load (the EMA ones when the run
    kept them: its metrics were measured on those), checked against ``model``'s trained keys and shapes
    but not loaded: the caller's model (the trainer's, on rank 0) keeps its weights."""
    state = ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]
    want, ref = trained_keys(model), model.state_dict()
    if set(state) != want:
        raise ValueError(f"checkpoint does not match the model: missing {sorted(want - set(state))}, unexpected {sorted(set(state) - want)}")
    wrong = [k for k in state if tuple(state[k].shape) != tuple(ref[k].shape)]
    if wrong:
        raise ValueError(f"checkpoint does not match the model: shapes differ for {wrong}")
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _commit_dir(tmp: Path, final: Path) -> None:
    """Put the complete folder ``tmp`` at ``final``.

    A folder cannot replace a non-empty folder in one rename (and ``renameat2(RENAME_EXCHANGE)`` is
    Linux-only), so an old ``final`` is first renamed aside, then removed. A kill before the first
    rename leaves the old export whole; one between the two renames leaves it aside under a hidden
    name, and rerunning the training (it resumes, ends, and exports again) writes the same folder.
    """
    aside = None
    if final.exists():
        aside = final.parent / private_name(".", f"{final.name}.old")
        os.replace(final, aside)
    try:
        os.replace(tmp, final)
    except BaseException:
        if aside is not None:
            os.replace(aside, final)
        raise
    fsync_dir(final.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def read_export_config(path: str | Path) -> dict:
    """config.json of an export folder, checked: FileNotFoundError / ValueError naming the file and what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no sim-heads export folder at {path}")
    for name in (CONFIG_FILE, MODEL_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not a complete sim-heads export: {name} is missing")
    try:
        cfg = json.loads((path / CONFIG_FILE).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path / CONFIG_FILE} is not valid JSON ({e}): export the run again") from None
    if not isinstance(cfg, dict) or cfg.get("model_type") != MODEL_TYPE:
        found = cfg.get("model_type") if isinstance(cfg, dict) else type(cfg).__name__
        raise ValueError(f"{path / CONFIG_FILE} is not a sim-heads export (model_type = {found!r}, expected {MODEL_TYPE!r})")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path / CONFIG_FILE} has format_version {cfg.get('format_version')!r}; this navcache reads {FORMAT_VERSION}")
    missing = [k for k in ("dv", "F", "K", "d", "telemetry_hidden", "dropout", "telemetry_norm", "llm") if k not in cfg]
    if missing:
        raise ValueError(f"{path / CONFIG_FILE} lacks {missing}: export the run again")
    return cfg


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}): export the run again") from None


def load_export(path: str | Path, device: str | torch.device = "cpu") -> tuple[SimV0Model, dict]:
    """(model in eval mode on ``device``, metadata shaped like a checkpoint's, as ``load_for_inference`` returns).

    The frozen LLM is rebuilt from ``config.json["llm"]`` as ``predict.load_for_inference`` does; a
    missing LLM folder raises FileNotFoundError.
    """
    path = Path(path)
    cfg = read_export_config(path)
    state = _read_weights(path / MODEL_FILE)
    model = build_model(cfg["llm"], int(cfg["dv"]), int(cfg["F"]), int(cfg["K"]), int(cfg["d"]), int(cfg["telemetry_hidden"]),
                        float(cfg["dropout"]))
    want = trained_keys(model)
    if set(state) != want:  # never a silently half-loaded model, nor frozen-LLM weights sneaking in
        raise ValueError(f"{path / MODEL_FILE} does not match the model: missing {sorted(want - set(state))}, "
                         f"unexpected {sorted(set(state) - want)}")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that differ from config.json's
        raise ValueError(f"{path / MODEL_FILE} does not match {path / CONFIG_FILE}: {e}") from None
    model.export_config = cfg
    return model.to(device).eval(), export_metadata(path, cfg)


def export_metadata(path: str | Path, cfg: dict | None = None) -> dict:
    """An export's config.json in the shape of a checkpoint's ``metadata`` (what ``load_for_inference``
    returns beside the model, and what ``navcache predict`` reads its default dataset / cache root from)."""
    cfg = read_export_config(path) if cfg is None else cfg
    src = cfg.get("source", {})
    return {"head": "sim-heads", **{k: cfg[k] for k in ("dv", "F", "K", "d", "telemetry_norm", "llm")}, "labels": cfg.get("labels"),
            "config": {"telemetry_hidden": cfg["telemetry_hidden"], "dropout": cfg["dropout"], "loop": {"amp": cfg.get("amp", "auto")},
                       "dataset": src.get("dataset"), "cache_root": src.get("cache_root"), "splits": src.get("splits")},
            "checkpoint": {"path": str(path), "epoch": src.get("best_epoch"), "val": None}, "export": cfg}
