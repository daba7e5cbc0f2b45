"""``navcache verify [--repair]``: check every cache under the root; rebuild only damaged parts."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from navcache.cache_specs.errors import EXIT_DAMAGE, EXIT_FAILED, EXIT_OK
from navcache.cache_specs.layout import PARTS
from navcache.cache_specs.manifest import invalidate, remove_temporaries
from navcache.cache_specs.reader import iter_caches
from navcache.cache_specs.verify import damaged_parts, needs_rebuild, verify_cache


def verify_and_repair(path: Path | None, project, repair: bool, as_json: bool) -> int:
    """``project``: the ProjectConfig (needed when ``path`` is None or ``repair``), else None."""
    from .console import console

    root = Path(path) if path is not None else Path(project.cache_root)
    caches = [root] if (root / PARTS).is_dir() or (root / "manifest.json").exists() else list(iter_caches(root))
    report, damaged = {}, {}
    for d in caches:
        dmg = verify_cache(d)
        report[str(d)] = [str(x) for x in dmg]
        if dmg:
            damaged[d] = dmg
    repaired = {}
    # strays (a user's folder beside parts/) are reported, never deleted, and need no rebuild
    rebuild = {d: dmg for d, dmg in damaged.items() if needs_rebuild(dmg)}
    if repair and rebuild:
        repaired = _repair(project, rebuild)
        for d in rebuild:
            report[str(d)] = [str(x) for x in verify_cache(d)]
    still = {k: v for k, v in report.items() if v}
    from rich.markup import escape

    if as_json:
        print(json.dumps({"caches": report, "repaired": repaired, "ok": not still}, indent=1))
    else:
        for d, items in report.items():
            console.print(f"[{'red' if items else 'green'}]{'DAMAGED' if items else 'ok'}[/] {escape(d)}")
            for it in items:
                console.print(f"    {escape(it)}")
        for d, parts in repaired.items():
            console.print(f"[cyan]repaired[/] {escape(d)}: rebuilt {', '.join(parts) or 'index/manifest only'}")
    if not caches:
        return EXIT_FAILED
    return EXIT_DAMAGE if still else EXIT_OK


def _repair(project, damaged: dict) -> dict[str, list[str]]:
    """Delete damaged parts and temporaries, then let ``extract --only`` re-encode exactly the
    episodes they held (planning keeps every episode of the intact parts the manifest lists) and
    finalise, which rewrites a damaged index or manifest and sweeps orphan parts."""
    from .runner import ExtractOptions, extract
    from .stages import STAGES, cache_name

    by_name = {cache_name(s): s for s in STAGES}
    done = {}
    for d, dmg in damaged.items():
        parts = sorted(damaged_parts(dmg))
        invalidate(d)  # retired, not deleted: planning still knows which intact parts hold what
        for p in parts:
            shutil.rmtree(d / PARTS / p, ignore_errors=True)
        remove_temporaries(d)
        dataset, split, spec = d.parts[-3], d.parts[-2], d.parts[-1]
        stage = by_name.get(spec)
        if stage is None or dataset not in project.datasets:
            continue
        extract(project, ExtractOptions(split=split, only=stage, datasets=(dataset,)))
        done[str(d)] = parts
    return done
