"""What a training run commits to disk, and how it is read back.

Checkpoints hold only plain containers of tensors / str / int / float / bool / None (no pickled
objects), so they load with ``torch.load(path, weights_only=True)``. Every file is committed by an
atomic rename (a checkpoint) or an fsynced append of one whole line (a metrics row), and a resumed
run drops the metrics rows written after the checkpoint it resumes from, so that a process killed
at any moment and rerun writes what an uninterrupted run writes.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from navcache.cache_specs.layout import TMP_PREFIX, private_name, sweep_stale_temporaries

# ----------------------------------------------------------------------------------------------
# trained state


def trained_keys(model: nn.Module) -> set[str]:
    """State-dict keys a checkpoint must hold: every parameter that trains, plus the persistent
    buffers (e.g. BatchNorm running stats) of each module that owns such a parameter, since they
    change in training too. Frozen backbones stay out."""
    keys = set()
    for prefix, module in model.named_modules():
        own = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        dot = f"{prefix}." if prefix else ""
        keys |= {dot + n for n in own}
        keys |= {dot + n for n, _ in module.named_buffers(recurse=False)}  # non-persistent ones never reach a state dict
    return keys


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``trained_keys`` of the model's state dict, detached, on CPU."""
    keys = trained_keys(model)
    return {n: t.detach().cpu().clone() for n, t in model.state_dict().items() if n in keys}


def load_trainable(model: nn.Module, path_or_state: str | Path | dict, prefer_ema: bool = True) -> dict:
    """Load a checkpoint's trained weights (and buffers) into ``model``; returns the whole checkpoint dict.

    With ``prefer_ema`` (the default) a checkpoint written with ``ema_decay > 0`` gives its EMA
    weights: those are the weights its metrics were measured on, so exports and predictions use
    them. ``prefer_ema=False`` gives the raw training weights (what a resume continues from).
    """
    if isinstance(path_or_state, dict):
        ckpt = path_or_state
    else:
        ckpt = torch.load(path_or_state, map_location="cpu", weights_only=True)
    state = ckpt["ema"] if prefer_ema and ckpt.get("ema") is not None else ckpt["model"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    lacking = sorted(trained_keys(model) & set(missing))
    if unexpected or lacking:
        raise RuntimeError(f"checkpoint does not match the model: missing {lacking}, unexpected {unexpected}")
    return ckpt


# ----------------------------------------------------------------------------------------------
# plain containers and files


def read_head_checkpoint(path: str | Path, head: str) -> dict:
    """The whole checkpoint dict (``weights_only=True``); ValueError unless ``metadata.head == head``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    found = (ckpt.get("metadata") or {}).get("head") if isinstance(ckpt, dict) else None
    if found != head:
        raise ValueError(f"{path} is not a {head} checkpoint (metadata.head = {found!r})")
    return ckpt


def plain(x: Any) -> Any:
    """Numbers / strings / lists / dicts / tensors only (checkpoints must load with weights_only=True).

    0-d tensors and numpy scalars become Python numbers; other tensors stay tensors.
    """
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, (np.generic, torch.Tensor)) and getattr(x, "ndim", 0) == 0:
        return x.item()
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, Path):
        return str(x)
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"cannot store {type(x).__name__} in a checkpoint or metrics line")


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary name, then rename: readers see the old file or the new one."""
    torch.save(obj, tmp := _temporary(path))
    os.replace(tmp, path)


def _temporary(path: Path) -> Path:
    """A fresh private name beside ``path``, after removing those of writers killed mid-write (a
    checkpoint's can be large, and a rerun never reuses a dead process's name)."""
    sweep_stale_temporaries(path.parent, TMP_PREFIX + path.name)
    return path.with_name(private_name(TMP_PREFIX, path.name))


def append_line(path: Path, row: dict) -> None:
    """Append one JSON row and fsync it, so that it is on disk before any later checkpoint."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_jsonl(path: Path, last_epoch: int, last_step: int | None = None) -> None:
    """Keep only whole rows written up to the checkpoint a run resumes from: rows with
    ``step <= last_step`` (rows without a ``step``, from older runs: ``epoch <= last_epoch``).
    Later rows were written before a crash that came before their checkpoint, and a row cut short
    by the crash does not parse."""
    if not path.exists():
        return
    keep = []
    for ln in path.read_text().splitlines():
        try:
            row = json.loads(ln)
        except ValueError:
            continue
        if not isinstance(row, dict):
            continue
        if last_step is not None and isinstance(row.get("step"), int):
            ok = row["step"] <= last_step
        else:
            ok = isinstance(row.get("epoch"), int) and row["epoch"] <= last_epoch
        if ok:
            keep.append(ln)
    tmp = _temporary(path)
    tmp.write_text("".join(ln + "\n" for ln in keep))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# random number generators, for a resume in the middle of an epoch


def rng_state(device: torch.device) -> dict:
    """The states of python's, numpy's and torch's generators (and the CUDA one of ``device``) as
    plain data. The loop reseeds at every epoch start, so only a mid-epoch checkpoint needs them."""
    version, keys, gauss = random.getstate()
    kind, np_keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {"python": [version, list(keys), gauss], "numpy": [kind, np_keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Inverse of ``rng_state``."""
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, np_keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(np_keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ----------------------------------------------------------------------------------------------
# which settings a resume may change

#: LoopConfig fields a resumed run may always change: where and how often things are written, on
#: which device. They do not change the weights any step computes, nor what an evaluation measures.
RESUMABLE_CHANGES = ("resume", "device", "out_dir", "save_every_epoch", "save_every_steps", "log_every_steps")


def resumable_changes(loop_config: dict) -> tuple[str, ...]:
    """``RESUMABLE_CHANGES``, plus ``epochs`` unless the schedule is cosine: a longer or shorter
    run would stretch the cosine over a new number of steps, so the steps already taken would
    belong to another schedule. Everything else (lr, schedule, EMA, batch, accumulation, seed,
    what an evaluation covers) would silently mix two trainings, or rank best checkpoints by
    evaluations that measured different things."""
    extra = ("epochs",) if loop_config.get("schedule", "constant") != "cosine" else ()
    return RESUMABLE_CHANGES + extra


def check_resume_config(saved: dict, now: dict, path: Path) -> None:
    """Raise ValueError naming every changed field that ``resumable_changes`` does not allow.
    Fields absent from ``saved`` (written before they existed) are not compared."""
    allowed = resumable_changes(saved)
    changed = sorted(k for k in now if k not in allowed and k in saved and saved[k] != now[k])
    if changed:
        diffs = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in changed)
        raise ValueError(f"cannot resume from {path}: LoopConfig changed ({diffs}); only {list(allowed)} may change "
                         "on resume. Train into a new out_dir, or set the old values back")
