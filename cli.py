"""navcache command line: a thin Typer shell. Each command parses options and calls one function:
``pipeline.commands`` for the cache commands; train / predict / export compose the two layers here
(the only place that imports both): ``pipeline.ensure.ensure_caches`` for what the head READS, then
``heads.commands``. Heavy modules are imported inside the commands so ``--help`` stays instant."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

import typer
import typer.core

from navcache.cache_specs.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, ConfigError, NavcacheError
from navcache.heads.registry import HEADS  # a dict of names: imports nothing else



class _Group(typer.core.TyperGroup):
    """A known error (``NavcacheError``, ``ConfigError``) escaping a command is one line on stderr
    and its exit code; the traceback only with ``--debug`` (the callback keeps it in ``ctx.obj``)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NavcacheError as e:
            if (ctx.obj or {}).get("debug"):
                raise
            raise typer.Exit(_error(e, EXIT_CONFIG if isinstance(e, ConfigError) else EXIT_FAILED)) from None


app = typer.Typer(cls=_Group, no_args_is_help=True, help="Extract frozen-encoder caches for navigation/VLA training, and inspect them.")


def _version(value: bool) -> None:
    if value:
        from navcache import __version__

        typer.echo(f"navcache {__version__}")
        raise typer.Exit()


@app.callback()
def _main(ctx: typer.Context, debug: bool = typer.Option(False, "--debug", help="Show tracebacks of known errors, and debug logs."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit.")):
    ctx.obj = {"debug": debug}
    if debug:
        import logging

        # the library logs a known error's traceback at DEBUG (its message is already printed)
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("navcache").setLevel(logging.DEBUG)

ConfigOpt = typer.Option(None, "--config", "-c", help="Project file (default: ./navcache.yaml, else the embedded demo).")
JsonOpt = typer.Option(False, "--json", help="Print a machine-readable JSON result on stdout.")


def _shard(value: Optional[str]):
    if value is None:
        return None
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise typer.BadParameter("expected I/N, e.g. 3/16 (or $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)", param_hint="'--shard'") from None
    return (i, n)


def _safe_names(what: str):
    """Typer callback: the option's value(s) must be safe ``what`` names (``cache_specs.config.check_name``),
    since they become folders under the cache root; exit 2 naming the option otherwise."""

    def check(value):
        from navcache.cache_specs.config import check_name

        for name in [value] if isinstance(value, str) else value or ():
            try:
                check_name(what, name, "")
            except ConfigError as e:
                raise typer.BadParameter(str(e)) from None
        return value

    return check


@app.command()
def extract(
    split: str = typer.Option("train", "--split", "-s", help="Split to build.", callback=_safe_names("split")),
    only: Optional[str] = typer.Option(None, "--only", help="Build this stage and whatever it needs.", callback=_safe_names("stage")),
    dataset: list[str] = typer.Option([], "--dataset", "-d", help="Restrict to these datasets (repeatable).",
                                      callback=_safe_names("dataset")),
    executor: str = typer.Option("local", "--executor", help="local | dask | slurm (dask workers submitted as SLURM jobs) | gpus (one worker per visible GPU)."),
    workers: int = typer.Option(2, "--workers", help="Dask LocalCluster worker processes; with --executor slurm, worker jobs."),
    cluster: list[str] = typer.Option([], "--cluster", help="KEY=VALUE over the project's slurm: block, e.g. cores=8 memory=32GB (repeatable)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Join an existing dask scheduler (tcp://host:8786)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Build only part I of N (SLURM arrays); a later plain run finalises."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (up to date / stale / missing parts) and stop."),
    strict: bool = typer.Option(False, "--strict", help="Exit 3 if any episode was quarantined."),
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
):
    """Build the caches of every configured stage for a split (only what is missing or stale)."""
    from navcache.pipeline.commands import extract_cmd
    from navcache.pipeline.runner import ExtractOptions

    if scheduler:
        executor = "dask"  # joining a scheduler implies the dask executor
    try:
        opts = ExtractOptions(split, only, tuple(dataset), executor, workers, scheduler, _shard(shard), dry_run)
    except ValueError as e:
        typer.echo(f"navcache: {e}", err=True)
        raise typer.Exit(EXIT_CONFIG)
    raise typer.Exit(extract_cmd(config, opts, as_json, strict, tuple(cluster)))


@app.command()
def status(
    split: Optional[str] = typer.Option(None, "--split", "-s", help="Only this split (default: all).", callback=_safe_names("split")),
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
):
    """Print the plan per stage: parts up to date, stale or missing."""
    from navcache.pipeline.commands import status_cmd

    raise typer.Exit(status_cmd(config, split, as_json))


@app.command()
def inspect(
    path: Optional[Path] = typer.Argument(None, help="A cache folder, or a cache root (default: the project's)."),
    episode: Optional[str] = typer.Option(None, "--episode", "-e", help="Show one episode's arrays."),
    plot: Optional[Path] = typer.Option(
        None, "--plot", help="With a geometry/keyframes/covisibility cache and --episode: write a contact sheet and a top-down PNG (and, with a covisibility cache, the heatmap pictures and files) into this folder."
    ),
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
):
    """Summarise caches: counts, arrays, provenance, quarantined episodes."""
    from navcache.pipeline.commands import inspect_cmd

    raise typer.Exit(inspect_cmd(path, config, as_json, episode, plot))


@app.command()
def verify(
    path: Optional[Path] = typer.Argument(None, help="A cache folder or root (default: the project's cache root)."),
    repair: bool = typer.Option(False, "--repair", help="Rebuild only the damaged parts."),
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
):
    """Recompute every checksum and name the damage found (exit 4 if any)."""
    from navcache.pipeline.commands import verify_cmd

    raise typer.Exit(verify_cmd(path, config, repair, as_json))


@app.command("demo-data")
def demo_data(
    out: Path = typer.Argument(..., help="Folder to write the demo world into."),
    scale: float = typer.Option(1.0, "--scale", help="Multiply the number of episodes (benchmarks)."),
    seed: int = typer.Option(0, "--seed"),
    pixels: bool = typer.Option(True, "--pixels/--no-pixels",
                                help="--no-pixels: NaVILA annotations and poses only (poses stage, gru-motion at scale)."),
):
    """Generate the procedural demo world (NaVILA + rover formats) and its tiny encoder."""
    from navcache.pipeline.commands import demo_data_cmd

    raise typer.Exit(demo_data_cmd(out, scale, seed, pixels))


submit_app = typer.Typer(no_args_is_help=True, help="Submit a command to SLURM as batch jobs (sbatch).")
app.add_typer(submit_app, name="submit")


@submit_app.command("extract")
def submit_extract(
    split: str = typer.Option("train", "--split", "-s", help="Split to build.", callback=_safe_names("split")),
    array: int = typer.Option(..., "--array", help="Number of shard jobs (task I runs extract --shard I/N)."),
    partition: Optional[str] = typer.Option(None, "--partition", "-p", help="SLURM partition (default: the cluster's)."),
    gpus_per_task: Optional[int] = typer.Option(None, "--gpus-per-task", help="GPUs per shard job."),
    time: Optional[str] = typer.Option(None, "--time", "-t", help="Time limit per job, SLURM syntax (e.g. 04:00:00)."),
    mem: Optional[str] = typer.Option(None, "--mem", help="Memory per job, SLURM syntax (e.g. 32G)."),
    cpus_per_task: Optional[int] = typer.Option(None, "--cpus-per-task", help="CPU cores per job (decode threads)."),
    only: Optional[str] = typer.Option(None, "--only", help="Build this stage and whatever it needs.", callback=_safe_names("stage")),
    dataset: list[str] = typer.Option([], "--dataset", "-d", help="Restrict to these datasets (repeatable).",
                                      callback=_safe_names("dataset")),
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
):
    """A SLURM array of N shard jobs, then a finalising job (--dependency=afterok); prints the job ids.

    Scripts and logs go to <cache_root>/.navcache/slurm/<stamp>/; `navcache status` shows each task's progress."""
    from navcache.pipeline.commands import submit_cmd
    from navcache.pipeline.executors.slurm_submit import SubmitOptions

    try:
        opts = SubmitOptions(split, array, partition, gpus_per_task, time, mem, cpus_per_task, tuple(dataset), only)
    except ValueError as e:
        typer.echo(f"navcache: {e}", err=True)
        raise typer.Exit(EXIT_CONFIG)
    raise typer.Exit(submit_cmd(config, opts, as_json))


export_app = typer.Typer(no_args_is_help=True, help="Write caches out in the formats other projects consume.")
app.add_typer(export_app, name="export")


@export_app.command("navila-poses")
def export_navila_poses(
    out: Path = typer.Argument(..., help="Output .jsonl (one file per split)."),
    dataset: str = typer.Option(..., "--dataset", "-d", callback=_safe_names("dataset")),
    split: str = typer.Option("train", "--split", "-s", callback=_safe_names("split")),
    config: Optional[Path] = ConfigOpt,
):
    """NaVILA pose sidecar: {video_id, poses, deltas, dist_bins, yaw_bins, step_valid} per line (padded steps: bins -100, the ignore index), streamed and atomic."""
    raise typer.Exit(_export_navila_poses(config, dataset, split, out))


@export_app.command("norm-stats")
def export_norm_stats(
    out: Path = typer.Argument(..., help="Output norm_stats.json."),
    dataset: str = typer.Option(..., "--dataset", "-d", callback=_safe_names("dataset")),
    split: str = typer.Option("train", "--split", "-s", callback=_safe_names("split")),
    horizon: int = typer.Option(50, "--horizon", help="Action chunk length H (openpi: 50 for pi0, 10 for pi05 LIBERO)."),
    config: Optional[Path] = ConfigOpt,
):
    """openpi norm_stats.json {"norm_stats": {"state", "actions"}} from the robot_meta cache, one streamed pass, no video decoding."""
    raise typer.Exit(_export_norm_stats(config, dataset, split, horizon, out))


def _export_norm_stats(config: Path | None, dataset: str, split: str, horizon: int, out: Path) -> int:
    import json

    from navcache.cache_specs.layout import cache_dir
    from navcache.heads.exports.norm_stats import export_norm_stats as write
    from navcache.pipeline.commands import load_project
    from navcache.pipeline.ensure import ensure_caches

    try:
        project = load_project(config)
        ensure_caches(project, [(dataset, split, "robot_meta")])
        report = write(cache_dir(project.cache_root, dataset, split, "robot_meta"), out, horizon)
    except (ConfigError, ValueError) as e:
        return _error(e, EXIT_CONFIG)
    except (NavcacheError, RuntimeError) as e:
        return _error(e, EXIT_FAILED)
    print(json.dumps(report.to_dict(), indent=1))
    return EXIT_OK


@export_app.command("openvla-stats")
def export_openvla_stats(
    out: Path = typer.Argument(..., help="Output dataset_statistics.json."),
    dataset: str = typer.Option(..., "--dataset", "-d", callback=_safe_names("dataset")),
    split: str = typer.Option("train", "--split", "-s", callback=_safe_names("split")),
    key: str = typer.Option("vamos_dataset", "--key", help="The dataset key: predict_action(..., unnorm_key=KEY)."),
    config: Optional[Path] = ConfigOpt,
):
    """OpenVLA's dataset_statistics.json of the velocity cache's actions (mean, std, min, max, q01, q99, mask), one streamed pass, atomic."""
    raise typer.Exit(_export_openvla_stats(config, dataset, split, key, out))


HeadArg = typer.Argument(..., metavar="HEAD", help=f"Which head: {' | '.join(HEADS)}.")
SetOpt = typer.Option([], "--set", help="KEY=VALUE on top of the preset and the file, e.g. loop.lr=0.001 (repeatable; values read as YAML).")


@app.command()
def train(
    name: str = HeadArg,
    preset: str = typer.Option("demo", "--preset", "-p", help="A named config of the head (its configuration.py PRESETS); demo: the embedded demo."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Trainer YAML, on top of the preset."),
    sets: list[str] = SetOpt,
    cache_root: Optional[Path] = typer.Option(None, "--cache-root"),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir"),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N"),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON, alone on stdout (progress goes to stderr)."),
):
    """Train a small head that reads only caches (the demo's caches are brought up to date first).

    Prints one line per epoch (key val metrics, * when it became best.pt, elapsed, ETA), then a summary.
    sim-heads: SIM v0 risk / reason / action heads over rover frame features + telemetry through a frozen LLM;
    best.pt = highest val risk_high_recall, then macro_f1.
    gru-motion: GRU motion encoder on the poses cache; exports a frozen MotionEncoder;
    best.pt = highest val next-step dist + yaw accuracy, then k-step, then lowest loss.
    """
    overrides = {"cache_root": cache_root and str(cache_root), "out_dir": out_dir and str(out_dir),
                 "loop": {"epochs": epochs, "seed": seed, "lr": lr, "device": device}}
    raise typer.Exit(_train(name, preset, config, overrides, sets, as_json))


@app.command()
def predict(
    name: str = HeadArg,
    out: Path = typer.Argument(..., help="Output .jsonl: one prediction per example, with its id (written atomically)."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A run's checkpoints/best.pt (or last.pt); sim-heads also takes its export/ folder."),
    split: str = typer.Option("val", "--split", "-s", callback=_safe_names("split")),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Default: the checkpoint's, else the demo's.",
                                          callback=_safe_names("dataset")),
    cache_root: Optional[Path] = typer.Option(None, "--cache-root", help="Default: the checkpoint's (if still there), else the project's."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Default: the head's."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N"),
    episode: Optional[list[str]] = typer.Option(None, "--episode", help="heatmaps: only this episode (repeatable)."),
):
    """Predict every example of a split's caches with a trained head; prints the summary (accuracy per target).

    sim-heads: risk / reason / action label + class probabilities per clip.
    gru-motion: next-step and k-step dist / yaw bins per step of each episode.
    heatmaps: OUT is a folder; per video the seed's pictures and files (prediction | ground truth).
    """
    raise typer.Exit(_predict(name, checkpoint, out, split, dataset, cache_root, batch_size, device, episode))


# -- the two layers composed: caches up to date (pipeline), then the head (heads) ----------------


def _say(msg: str) -> None:
    from navcache.pipeline.console import console

    console.print(f"[cyan]{msg}[/]")


def _error(e: Exception, code: int) -> int:
    print(f"navcache: {'configuration error: ' if code == EXIT_CONFIG else ''}{e}", file=sys.stderr)
    return code


def _train(name: str, preset: str, config: Path | None, overrides: dict[str, Any], sets: Iterable[str] = (),
           as_json: bool = False) -> int:
    """``navcache train NAME``: the head's config (preset, file, options, then ``--set KEY=VALUE``), its demo
    caches brought up to date, then training. ``as_json``: stdout holds the result JSON only."""
    from contextlib import nullcontext, redirect_stdout

    from navcache.cache_specs.config import merge, parse_assignments
    from navcache.heads import commands, registry
    from navcache.pipeline.ensure import ensure_caches
    from navcache.pipeline.project import demo_project

    try:
        cfg = commands.load_config(name, preset, config, merge(overrides, parse_assignments(list(sets))))
        with redirect_stdout(sys.stderr) if as_json else nullcontext():  # cache-building messages too
            project = demo_project(cfg.cache_root, say=_say)
            if project is not None:
                ensure_caches(project, registry.reads(registry.get(name), cfg.dataset, cfg.splits, cfg))
        if project is not None:
            cfg = dataclasses.replace(cfg, cache_root=str(project.cache_root))  # absolute: predict finds it from anywhere
    except ConfigError as e:
        return _error(e, EXIT_CONFIG)
    except NavcacheError as e:
        return _error(e, EXIT_FAILED)
    return commands.train_cmd(name, cfg, as_json)


def _predict(name: str, checkpoint: Path, out: Path, split: str, dataset: str | None, cache_root: Path | None,
            batch_size: int | None, device: str, episodes: list[str] | None = None) -> int:
    """``navcache predict NAME``. Without --dataset / --cache-root: the checkpoint's recorded ones (the cache
    root while it still exists here), else the project's cache root (the demo's brought up to date first)."""
    from navcache.heads import commands, registry
    from navcache.pipeline.ensure import ensure_caches
    from navcache.pipeline.project import default_cache_root, demo_project

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
                if project is not None:  # the checkpoint's config: a head may read other datasets' caches (a second camera's)
                    ensure_caches(project, registry.reads(head, dataset, [split], head.Config.from_dict(recorded) if recorded else None))
    except ConfigError as e:
        return _error(e, EXIT_CONFIG)
    except NavcacheError as e:
        return _error(e, EXIT_FAILED)
    missing = _missing_split(Path(cache_root), dataset, split)
    if missing:
        return _error(ConfigError(missing), EXIT_CONFIG)
    from inspect import signature  # the module name is taken by the ``inspect`` command

    takes = signature(head.predict_split).parameters
    extra = {}
    if episodes:
        if "episodes" not in takes:
            return _error(ConfigError(f"--episode: head {name!r} predicts whole splits only"), EXIT_CONFIG)
        extra["episodes"] = list(episodes)
    if "frames" in takes:
        extra["frames"] = _keyframe_images(Path(cache_root), dataset, split)
    return commands.predict_cmd(name, checkpoint, out, split, dataset, Path(cache_root), batch_size, device, **extra)


def _keyframe_images(cache_root: Path, dataset: str, split: str):
    """``frames(episode, frame_indices)`` -> uint8 [K, H, W, 3] decoded through the project's source and
    brought to the geometry's model input, for a head that draws on them; None (the head draws on
    cached depth) when no project here configures ``dataset`` over ``cache_root``."""
    from navcache.pipeline.config import load_config
    from navcache.pipeline.inspect_geometry import _model_input
    from navcache.pipeline.project import DEFAULT_FILE, demo_project
    from navcache.pipeline.sources import make_source

    project = demo_project(cache_root, say=_say) or (load_config(Path(DEFAULT_FILE)) if Path(DEFAULT_FILE).exists() else None)
    if project is None or dataset not in project.datasets or Path(project.cache_root).resolve() != cache_root.resolve():
        return None
    ds = project.dataset(dataset)
    source = make_source(ds.source, ds.root, **ds.options)

    def frames(episode: str, frame_indices: list[int]):
        ep = next((e for e in source.episodes(split) if e.episode_id == episode), None)
        if ep is None:
            raise ValueError(f"episode {episode!r} is no longer listed by dataset {dataset!r} split {split!r}")
        return _model_input(source.read_frames(ep, list(frame_indices)).pixels, project.stage_settings("geometry", dataset))

    return frames


def _missing_split(cache_root: Path, dataset: str, split: str) -> str | None:
    """Why (dataset, split) has no caches under ``cache_root``, naming what exists; None when it has."""
    from navcache.cache_specs.config import unknown_name

    if (cache_root / dataset / split).is_dir():
        return None
    have = sorted(d.name for d in cache_root.iterdir() if d.is_dir() and not d.name.startswith(".")) if cache_root.is_dir() else []
    if not have:
        return f"{cache_root} is not a complete cache root (no caches there); build them with `navcache extract`"
    if not (cache_root / dataset).is_dir():
        return str(unknown_name("dataset", dataset, have, f"--dataset (caches under {cache_root})"))
    have = sorted(d.name for d in (cache_root / dataset).iterdir() if d.is_dir())
    return str(unknown_name("split", split, have, f"--split (caches of {dataset} under {cache_root})"))


def export_for_dataset(project, dataset: str, split: str, out: Path):
    """The NaVILA pose sidecar of (dataset, split): poses cache brought up to date, checked against the
    source's annotation ids. Returns the ``ExportReport``."""
    from navcache.cache_specs.layout import cache_dir
    from navcache.heads.exports.navila_poses import export_navila_poses
    from navcache.pipeline.commands import source_episode_ids
    from navcache.pipeline.ensure import ensure_caches

    ensure_caches(project, [(dataset, split, "poses")])
    ids = source_episode_ids(project, dataset, split)
    return export_navila_poses(cache_dir(project.cache_root, dataset, split, "poses"), out, ids)


def _export_navila_poses(config: Path | None, dataset: str, split: str, out: Path) -> int:
    """``navcache export navila-poses``: prints the export report."""
    import json

    from navcache.pipeline.commands import load_project

    try:
        report = export_for_dataset(load_project(config), dataset, split, out)
    except ConfigError as e:
        return _error(e, EXIT_CONFIG)
    except (NavcacheError, RuntimeError) as e:
        return _error(e, EXIT_FAILED)
    print(json.dumps(report.to_dict(), indent=1))
    return EXIT_OK



def _export_openvla_stats(config: Path | None, dataset: str, split: str, key: str, out: Path) -> int:
    """``navcache export openvla-stats``: the velocity cache brought up to date, then the file."""
    import json

    from navcache.cache_specs.layout import cache_dir
    from navcache.heads.exports.openvla_stats import export_openvla_stats as write_stats
    from navcache.pipeline.commands import load_project
    from navcache.pipeline.ensure import ensure_caches

    try:
        project = load_project(config)
        ensure_caches(project, [(dataset, split, "velocity")])
        stats = write_stats(cache_dir(project.cache_root, dataset, split, "velocity"), out, key)
    except ConfigError as e:
        return _error(e, EXIT_CONFIG)
    except (NavcacheError, RuntimeError, ValueError) as e:
        return _error(e, EXIT_FAILED)
    print(json.dumps({"out": str(out), "key": key, "num_transitions": stats[key]["num_transitions"],
                      "q01": stats[key]["action"]["q01"], "q99": stats[key]["action"]["q99"]}, indent=1))
    return EXIT_OK

if __name__ == "__main__":
    app()
