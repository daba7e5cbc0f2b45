"""The library functions behind the pipeline's CLI commands (extract, status, inspect, verify,
demo-data). Each returns the process exit code (``cache_specs.errors``: 0 ok, 1 failed, 2 bad
configuration, 3 quarantine under --strict, 4 damage). Head commands live in ``heads.commands``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from navcache.cache_specs.errors import EXIT_CONFIG, EXIT_DAMAGE, EXIT_FAILED, EXIT_OK, EXIT_QUARANTINE  # noqa: F401  (re-exported)

from .errors import ConfigError, NavcacheError


def load_project(config: Path | None):
    """The project (``--config``, ./navcache.yaml, else the embedded demo), saying what it does in cyan."""
    from .console import console
    from .project import resolve_project

    return resolve_project(config, say=lambda m: console.print(f"[cyan]{m}[/]"))


def extract_cmd(config: Path | None, opts, as_json: bool = False, strict: bool = False, cluster: tuple[str, ...] = ()) -> int:
    from .console import RichReporter, print_notes, print_plan, print_summary
    from .runner import extract, plan_all

    try:
        project = with_cluster(load_project(config), cluster)
        if opts.dry_run:
            from contextlib import closing

            from .fingerprint import memo_hasher
            from .summary import RunSummary

            s = RunSummary(dry_run=True)
            with closing(memo_hasher(project.cache_root)) as hasher:  # the memo extract filled: nothing re-read
                plans = plan_all(project, opts, s, hasher)
            if as_json:
                print(json.dumps({"plan": [_plan_json(p) for p in plans], "errors": s.errors, "skipped": s.skipped}, indent=1))
            else:
                print_plan(plans)
                print_notes(s)
            return EXIT_FAILED if s.errors else EXIT_OK
        summary = extract(project, opts, None if as_json else RichReporter())
    except (ConfigError, ValueError) as e:
        print(f"navcache: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if as_json:
        print(json.dumps(summary.to_dict(), indent=1))
    else:
        print_summary(summary)
    if summary.errors:
        return EXIT_FAILED
    if strict and summary.quarantined:
        return EXIT_QUARANTINE
    return EXIT_OK


def with_cluster(project, sets: tuple[str, ...]):
    """The project with ``--cluster KEY=VALUE`` assignments merged over its ``slurm:`` block."""
    if not sets:
        return project
    import dataclasses

    from navcache.cache_specs.config import build, merge, parse_assignments, to_plain

    from .executors.slurm_cluster import SlurmClusterConfig

    slurm = build(SlurmClusterConfig, merge(to_plain(project.slurm), parse_assignments(list(sets))), "--cluster")
    return dataclasses.replace(project, slurm=slurm)


def _plan_json(sp) -> dict:
    return {"dataset": sp.dataset, "split": sp.split, "stage": sp.stage_name, "cache_dir": str(sp.cache_dir), "complete": sp.finalized, **sp.counts()}


def status_cmd(config: Path | None, split: str | None, as_json: bool) -> int:
    from .runner import ExtractOptions

    try:
        project = load_project(config)
        splits = sorted({s for d in project.datasets.values() for s in d.splits}) if split is None else [split]
    except ConfigError as e:
        print(f"navcache: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    code = EXIT_OK
    for sp in splits:
        code = max(code, extract_cmd(config, ExtractOptions(split=sp, dry_run=True), as_json))
    return max(code, array_status(project, split, as_json))


def array_status(project, split: str | None, as_json: bool) -> int:
    """Per task of every SLURM array (``navcache submit``) still queued or running: its state and
    the parts it owns that are committed."""
    from .executors.slurm_submit import SlurmError, load_submissions, queue_states, shard_progress, task_states
    from .fingerprint import FileHasher
    from .runner import ExtractOptions, plan_all
    from .summary import RunSummary

    subs = [s for s in load_submissions(project.cache_root) if split in (None, s.split)]
    try:
        active = [(s, queue_states(s.finalize_job)) for s in subs if queue_states(s.array_job) or queue_states(s.finalize_job)]
        report = []
        for s, fin in active:
            opts = ExtractOptions(split=s.split, only=s.only, datasets=s.datasets, dry_run=True)
            plans = plan_all(project, opts, RunSummary(dry_run=True), FileHasher())
            tasks = [{"task": i, "state": st, **row} for i, (st, row) in enumerate(zip(task_states(s), shard_progress(plans, s.array)))]
            report.append({**s.to_dict(), "finalize_state": next(iter(fin.values()), "done").lower(), "tasks": tasks})
    except SlurmError as e:
        print(f"navcache: submitted arrays: {e}", file=sys.stderr)
        return EXIT_FAILED
    if as_json:
        if report:
            print(json.dumps({"slurm": report}, indent=1))
        return EXIT_OK
    from rich.table import Table

    from .console import console

    for r in report:
        t = Table(title=f"SLURM array {r['array_job']} ({r['split']}): finalising job {r['finalize_job']} {r['finalize_state']}")
        for col in ("task", "state", "parts built"):
            t.add_column(col)
        for row in r["tasks"]:
            t.add_row(str(row["task"]), row["state"], f"{row['built']}/{row['parts']}")
        console.print(t)
    return EXIT_OK


def submit_cmd(config: Path | None, opts, as_json: bool = False) -> int:
    """``navcache submit extract``: the array and its finalising job submitted; prints their ids."""
    from .executors.slurm_submit import SlurmError, submit
    from .runner import ExtractOptions, check_selection

    try:
        project = load_project(config)  # an embedded demo world is generated here, once, not by N racing tasks
        check_selection(project, ExtractOptions(split=opts.split, only=opts.only, datasets=opts.datasets))
        sub = submit(project.cache_root, opts, config, Path.cwd())
    except ConfigError as e:
        print(f"navcache: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except SlurmError as e:
        print(f"navcache: {e}", file=sys.stderr)
        return EXIT_FAILED
    if as_json:
        print(json.dumps(sub.to_dict(), indent=1))
    else:
        print(f"submitted array job {sub.array_job} ({sub.array} tasks, --shard I/{sub.array}) "
              f"and finalising job {sub.finalize_job} (afterok:{sub.array_job})")
        print(f"scripts and logs: {sub.folder}")
    return EXIT_OK


def inspect_cmd(path: Path | None, config: Path | None, as_json: bool, episode: str | None = None, plot: Path | None = None) -> int:
    from navcache.cache_specs.manifest import IncompleteCache
    from navcache.cache_specs.reader import iter_caches, open_cache

    from .console import console

    if plot is not None:
        if path is None or episode is None:
            print("navcache: --plot needs a geometry or keyframes cache folder and --episode", file=sys.stderr)
            return EXIT_CONFIG
        from .inspect_geometry import plot_episode

        try:
            written = plot_episode(load_project(config), Path(path), episode, plot)
        except (NavcacheError, IncompleteCache) as e:
            print(f"navcache: {e}", file=sys.stderr)
            return EXIT_FAILED
        for p in written:
            print(p)
        return EXIT_OK

    if path is None:
        try:
            path = Path(load_project(config).cache_root)
        except ConfigError as e:
            print(f"navcache: configuration error: {e}", file=sys.stderr)
            return EXIT_CONFIG
    path = Path(path)
    if not path.is_dir():
        print(f"navcache: {path}: no such cache folder or cache root", file=sys.stderr)
        return EXIT_FAILED
    if (path / "manifest.json").exists() or (path / "parts").is_dir():
        try:
            c = open_cache(path)
        except IncompleteCache as e:
            print(f"navcache: {e}", file=sys.stderr)
            return EXIT_FAILED
        if episode is not None:
            if episode not in c:  # a typo or a quarantined episode: say so, no traceback
                quarantined = dict(c.quarantined.iter_rows())
                if episode in quarantined:
                    why = f"was quarantined: {quarantined[episode]}"
                else:
                    from navcache.cache_specs.config import suggest

                    why = f"is not in {path} ({len(c)} episodes, e.g. {', '.join(c.episodes[:3])}){suggest(episode, c.episodes)}"
                print(f"navcache: episode {episode!r} {why}", file=sys.stderr)
                return EXIT_FAILED
            data = {k: {"dtype": str(v.dtype), "shape": list(v.shape), "mean": float(v.astype("float64").mean()) if v.size else None} for k, v in c[episode].items()}
            print(json.dumps({"episode_id": episode, "arrays": data}, indent=1)) if as_json else console.print(data)
            return EXIT_OK
        if as_json:
            print(json.dumps({**c.summary(), "quarantined": c.quarantined.to_dicts()}, indent=1, default=str))
        else:
            from rich.markup import escape

            console.print(escape(repr(c)))
            for row in c.quarantined.iter_rows():
                console.print(f"  [yellow]quarantined[/] {escape(f'{row[0]}: {row[1]}')}")
        return EXIT_OK
    caches = list(iter_caches(path))
    if not caches:
        print(f"navcache: no caches under {path} (a cache root holds <dataset>/<split>/<spec>/ folders; build them with `navcache extract`)", file=sys.stderr)
        return EXIT_FAILED
    rows = []
    for d in caches:
        try:
            with open_cache(d) as c:
                rows.append({"cache": str(d.relative_to(path)), "complete": True, **c.manifest["counts"], "spec": c.spec["name"]})
        except IncompleteCache:
            rows.append({"cache": str(d.relative_to(path)), "complete": False})
    if as_json:
        print(json.dumps({"cache_root": str(path), "caches": rows}, indent=1))
    else:
        from rich.table import Table

        t = Table(title=f"caches under {path}")
        for col in ("cache", "complete", "ok", "quarantined", "rows", "parts"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["cache"], str(r["complete"]), *(str(r.get(k, "-")) for k in ("ok", "quarantined", "rows", "parts")))
        console.print(t)
    return EXIT_OK if caches else EXIT_FAILED


def verify_cmd(path: Path | None, config: Path | None, repair: bool, as_json: bool) -> int:
    from .verify_repair import verify_and_repair

    try:
        return verify_and_repair(path, load_project(config) if (path is None or repair) else None, repair, as_json)
    except ConfigError as e:
        print(f"navcache: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG


def demo_data_cmd(out: Path, scale: float, seed: int, pixels: bool = True) -> int:
    from .demo import generate_demo
    from .encoders.tiny import make_random_dinov3
    from .project import DEMO_ENCODER

    info = generate_demo(Path(out), scale=scale, seed=seed, pixels=pixels)
    make_random_dinov3(Path(out) / DEMO_ENCODER, size="tiny", seed=0)
    print(json.dumps({"out": str(out), "info": repr(info)}, indent=1))
    return EXIT_OK


def source_episode_ids(project, dataset: str, split: str) -> list[str]:
    """The ids the dataset's source lists for ``split`` (e.g. the annotation ids a NaVILA export is checked against)."""
    from .sources import make_source

    ds = project.dataset(dataset)
    return [e.episode_id for e in make_source(ds.source, ds.root, **ds.options).episodes(split)]
