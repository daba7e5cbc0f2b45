"""The CLI's commands that need both layers: bring the caches a command reads up to date (``pipeline``),
then train / predict / export (``heads``). The only library module that imports both; only ``cli`` imports it.

Every train / predict / export command goes through ``ensure_caches``. Train and predict do so for the
embedded demo only (a head pointed at caches of its own reads them as they are); an export always
does, for the project it is given.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cache_specs.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, ConfigError, NavcacheError

Need = tuple[str, str, str]  # (dataset, split, cache spec name)


def _say(msg: str) -> None:
    from pipeline.console import console

    console.print(f"[cyan]{msg}[/]")


def _error(e: Exception, code: int) -> int:
    what = "configuration error: " if code == EXIT_CONFIG else ""
    print(f"navcache: {what}{e}", file=sys.stderr)
    return code


def ensure_caches(project, needs: Iterable[Need]) -> None:
    """Bring every cache in ``needs`` up to date with ``extract`` (its stage only; parts up to date are skipped).

    Under torchrun (WORLD_SIZE > 1) every rank runs this at once, and a shard has one writer, ever:
    there the caches must already be complete (``navcache extract`` first), and a missing one is an error.
    """
    from cache_specs.layout import MANIFEST, cache_dir
    from pipeline.runner import ExtractOptions, extract
    from pipeline.stages import STAGES, cache_name

    stage_of = {cache_name(s): s for s in STAGES}
    needs = list(dict.fromkeys(needs))
    for dataset, _, spec in needs:
        project.dataset(dataset)  # a ConfigError naming the known datasets
        if spec not in stage_of:
            raise ConfigError(f"no stage writes a {spec!r} cache (stages write: {', '.join(sorted(stage_of))})")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        missing = [n for n in needs if not (cache_dir(project.cache_root, *n) / MANIFEST).exists()]
        if missing:
            raise NavcacheError(f"caches {['/'.join(n) for n in missing]} are not built: run `navcache extract` before torchrun")
        return
    for dataset, split, spec in needs:
        summary = extract(project, ExtractOptions(split, only=stage_of[spec], datasets=(dataset,)))
        if summary.errors:
            raise NavcacheError("; ".join(summary.errors))


def train(name: str, preset: str, config: Path | None, overrides: dict[str, Any], sets: Iterable[str] = ()) -> int:
    """``navcache train NAME``: the head's config (preset, file, options, then ``--set KEY=VALUE``), its demo
    caches brought up to date, then training."""
    from cache_specs.config import merge, parse_assignments
    from heads import commands, registry
    from pipeline.project import demo_project

    try:
        cfg = commands.load_config(name, preset, config, merge(overrides, parse_assignments(list(sets))))
        project = demo_project(cfg.cache_root, say=_say)
        if project is not None:
            ensure_caches(project, registry.reads(registry.get(name), cfg.dataset, cfg.splits))
            cfg = dataclasses.replace(cfg, cache_root=str(project.cache_root))  # absolute: predict finds it from anywhere
    except ConfigError as e:
        return _error(e, EXIT_CONFIG)
    except NavcacheError as e:
        return _error(e, EXIT_FAILED)
    return commands.train_cmd(name, cfg)


def predict(name: str, checkpoint: Path, out: Path, split: str, dataset: str | None, cache_root: Path | None,
            batch_size: int | None, device: str) -> int:
    """``navcache predict NAME``. Without --dataset / --cache-root: the checkpoint's recorded ones (the cache
    root while it still exists here), else the project's cache root (the demo's brought up to date first)."""
    from heads import commands, registry
    from pipeline.project import default_cache_root, demo_project

    try:
        head = registry.get(name)
        commands.check_device(device)
        recorded = commands.recorded_inputs(name, checkpoint)
        dataset = dataset or recorded.get("dataset") or head.PRESETS["demo"].dataset
        if cache_root is None:
            rec_root = recorded.get("cache_root")
            if rec_root and Path(rec_root).is_dir():
                cache_root = Path(rec_root)
            else:
                cache_root = default_cache_root()
                project = demo_project(cache_root, say=_say)
                if project is not None:
                    ensure_caches(project, registry.reads(head, dataset, [split]))
    except ConfigError as e:
        return _error(e, EXIT_CONFIG)
    except NavcacheError as e:
        return _error(e, EXIT_FAILED)
    return commands.predict_cmd(name, checkpoint, out, split, dataset, Path(cache_root), batch_size, device)


def export_for_dataset(project, dataset: str, split: str, out: Path):
    """The NaVILA pose sidecar of (dataset, split): poses cache brought up to date, checked against the
    source's annotation ids. Returns the ``ExportReport``."""
    from cache_specs.layout import cache_dir
    from heads.exports.navila_poses import export_navila_poses
    from pipeline.commands import source_episode_ids

    ensure_caches(project, [(dataset, split, "poses")])
    ids = source_episode_ids(project, dataset, split)
    return export_navila_poses(cache_dir(project.cache_root, dataset, split, "poses"), out, ids)


def export_navila_poses(config: Path | None, dataset: str, split: str, out: Path) -> int:
    """``navcache export navila-poses``: prints the export report."""
    import json

    from pipeline.commands import load_project

    try:
        report = export_for_dataset(load_project(config), dataset, split, out)
    except ConfigError as e:
        return _error(e, EXIT_CONFIG)
    except (NavcacheError, RuntimeError) as e:
        return _error(e, EXIT_FAILED)
    print(json.dumps(report.to_dict(), indent=1))
    return EXIT_OK
