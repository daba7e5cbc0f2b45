"""Bring the caches a command reads up to date: the pipeline half of every train / predict / export.

A head declares what it reads (``heads.<name>.configuration.READS``); ``cli.py`` turns that into
``needs`` and calls ``ensure_caches`` before handing the caches to the head, so ``pipeline`` and
``heads`` never import each other.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

from navcache.cache_specs.errors import ConfigError, NavcacheError

Need = tuple[str, str, str]  # (dataset, split, cache spec name)


def ensure_caches(project, needs: Iterable[Need]) -> None:
    """Bring every cache in ``needs`` up to date with ``extract`` (its stage only; parts up to date are skipped).

    Under torchrun (WORLD_SIZE > 1) every rank runs this at once, and a shard has one writer, ever:
    there the caches must already be complete (``navcache extract`` first), and a missing one is an error.
    """
    from navcache.cache_specs.layout import MANIFEST, cache_dir
    from navcache.pipeline.runner import ExtractOptions, extract
    from navcache.pipeline.stages import STAGES, cache_name

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
