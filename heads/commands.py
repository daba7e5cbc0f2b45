"""The library functions behind ``navcache train / predict <head>``: caches in, runs and predictions out.

They take cache roots and paths and never build caches: the CLI brings the caches a head ``READS``
up to date first (``cli.py`` with ``pipeline.ensure``). Each ``*_cmd`` prints its result (train: a summary, or JSON) and
returns the exit code (``cache_specs.errors``).
"""
from __future__ import annotations

import json
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from navcache.cache_specs.errors import EXIT_CONFIG, EXIT_OK, ConfigError

from . import registry


def load_config(name: str, preset: str = "demo", path: Path | None = None, overrides: dict[str, Any] | None = None):
    """Head ``name``'s frozen config: ``preset``, then the YAML file, then ``overrides`` (None = not given)."""
    return registry.get(name).load_config(path, preset, **(overrides or {}))


def train_cmd(name: str, cfg, as_json: bool = False) -> int:
    """Train head ``name`` with ``cfg`` (on the caches under ``cfg.cache_root``); rank 0 prints the result.

    Default: the loop's one line per evaluation, then a short summary (``heads.console.summary``).
    ``as_json``: the whole result as JSON, alone on stdout (the loop's lines go to stderr).
    """
    from . import console
    from .distributed import is_master

    head = registry.get(name)
    if as_json:
        with redirect_stdout(sys.stderr):
            result = head.train_head(cfg)
    else:
        result = head.train_head(cfg)
    if is_master():
        print(json.dumps(result, indent=1, default=str) if as_json else "\n".join(console.summary(result)), flush=True)
    return EXIT_OK


def check_device(device: str) -> str:
    import torch

    if not (device == "cpu" or device.startswith("cuda")) or (device.startswith("cuda") and not torch.cuda.is_available()):
        raise ConfigError(f"--device {device!r}: expected cpu, or cuda[:N] on a machine with CUDA")
    return device


def recorded_inputs(name: str, checkpoint: Path) -> dict:
    """The config a checkpoint of head ``name`` was trained with (its dataset, cache_root, ...)."""
    import pickle

    try:
        return registry.get(name).read_checkpoint(checkpoint)["metadata"].get("config", {})
    except (FileNotFoundError, ValueError, RuntimeError, pickle.UnpicklingError, EOFError) as e:
        raise ConfigError(f"--checkpoint {checkpoint}: {e}") from None


def predict_cmd(name: str, checkpoint: Path, out: Path, split: str, dataset: str, cache_root: Path, batch_size: int | None = None,
                device: str = "cpu", **extra) -> int:
    """Predict every example of ``dataset``/``split`` under ``cache_root`` to ``out`` (JSONL; heatmaps: a folder);
    prints the summary. ``batch_size`` None: the head's default; ``extra``: keyword arguments of the head's
    ``predict_split`` beyond the common ones (heatmaps: episodes, frames)."""
    from navcache.cache_specs.manifest import IncompleteCache

    sizes = {} if batch_size is None else {"batch_size": batch_size}
    try:
        summary = registry.get(name).predict_split(checkpoint, cache_root, dataset, split, out, device=device, **sizes, **extra)
    except (ValueError, IncompleteCache, FileNotFoundError) as e:
        print(f"navcache: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(json.dumps(summary, indent=1))
    return EXIT_OK
