"""The library functions behind each CLI command. Each returns the process exit code.

Exit codes (documented in the README):
    0  success
    1  a dataset or stage failed (errors listed), or nothing to open
    2  invalid configuration or options
    3  --strict and at least one episode was quarantined
    4  verify found damage (and --repair was not given or could not fix it)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .errors import ConfigError, NavcacheError

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_QUARANTINE, EXIT_DAMAGE = 0, 1, 2, 3, 4


def _project(config: Path | None):
    from .console import console
    from .project import resolve_project

    return resolve_project(config, say=lambda m: console.print(f"[cyan]{m}[/]"))


def extract_cmd(config: Path | None, opts, as_json: bool = False, strict: bool = False) -> int:
    from .console import RichReporter, print_plan, print_summary
    from .runner import extract, plan_all

    try:
        project = _project(config)
        if opts.dry_run:
            from .fingerprint import FileHasher
            from .summary import RunSummary

            s = RunSummary(dry_run=True)
            plans = plan_all(project, opts, s, FileHasher())
            if as_json:
                print(json.dumps({"plan": [_plan_json(p) for p in plans], "errors": s.errors}, indent=1))
            else:
                print_plan(plans)
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


def _plan_json(sp) -> dict:
    return {"dataset": sp.dataset, "split": sp.split, "stage": sp.stage_name, "cache_dir": str(sp.cache_dir), "complete": sp.finalized, **sp.counts()}


def status_cmd(config: Path | None, split: str | None, as_json: bool) -> int:
    from .runner import ExtractOptions

    try:
        project = _project(config)
        splits = sorted({s for d in project.datasets.values() for s in d.splits}) if split is None else [split]
    except ConfigError as e:
        print(f"navcache: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    code = EXIT_OK
    for sp in splits:
        code = max(code, extract_cmd(config, ExtractOptions(split=sp, dry_run=True), as_json))
    return code


def inspect_cmd(path: Path | None, config: Path | None, as_json: bool, episode: str | None = None, plot: Path | None = None) -> int:
    from cache_specs.manifest import IncompleteCache
    from cache_specs.reader import iter_caches, open_cache

    from .console import console

    if plot is not None:
        if path is None or episode is None:
            print("navcache: --plot needs a geometry or keyframes cache folder and --episode", file=sys.stderr)
            return EXIT_CONFIG
        from .inspect_geometry import plot_episode

        try:
            written = plot_episode(_project(config), Path(path), episode, plot)
        except (NavcacheError, IncompleteCache) as e:
            print(f"navcache: {e}", file=sys.stderr)
            return EXIT_FAILED
        for p in written:
            print(p)
        return EXIT_OK

    if path is None:
        try:
            path = Path(_project(config).cache_root)
        except ConfigError as e:
            print(f"navcache: configuration error: {e}", file=sys.stderr)
            return EXIT_CONFIG
    path = Path(path)
    if (path / "manifest.json").exists() or (path / "parts").is_dir():
        try:
            c = open_cache(path)
        except IncompleteCache as e:
            print(f"navcache: {e}", file=sys.stderr)
            return EXIT_FAILED
        if episode is not None:
            if episode not in c:  # a typo or a quarantined episode: say so, no traceback
                quarantined = dict(c.quarantined.iter_rows())
                why = f"was quarantined: {quarantined[episode]}" if episode in quarantined else f"is not in {path} ({len(c)} episodes)"
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
        return verify_and_repair(path, config, repair, as_json)
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


def export_navila_poses_cmd(config: Path | None, dataset: str, split: str, out: Path) -> int:
    from heads.exports.navila_poses import export_for_dataset

    try:
        report = export_for_dataset(_project(config), dataset, split, out)
    except ConfigError as e:
        print(f"navcache: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (NavcacheError, RuntimeError) as e:
        print(f"navcache: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(report.to_dict(), indent=1))
    return EXIT_OK


def train_gru_motion_cmd(config: Path | None, cache_root: Path | None, out_dir: Path | None, epochs: int | None, seed: int | None, device: str | None) -> int:
    from heads.gru_motion import load_config, train_gru_motion

    try:
        cfg = load_config(config, cache_root=cache_root, out_dir=out_dir, loop={"epochs": epochs, "seed": seed, "device": device})
    except (ConfigError, ValueError) as e:
        print(f"navcache: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    result = train_gru_motion(cfg)
    print(json.dumps(result, indent=1, default=str))
    return EXIT_OK


def train_sim_heads_cmd(config: Path | None, out_dir: Path | None, epochs: int | None, seed: int | None, lr: float | None) -> int:
    """Without a trainer config: the embedded demo (its rover caches are brought up to date first)."""
    from heads.sim_heads import load_config, train_sim_heads

    from .runner import ExtractOptions, extract

    try:
        overrides: dict = {"out_dir": out_dir, "loop": {"epochs": epochs, "seed": seed, "lr": lr}}
        if config is None:
            project = _project(None)
            ds = project.dataset("demo_rover")
            for split in ds.splits:
                for stage in ("frame-features", "rover-meta"):
                    s = extract(project, ExtractOptions(split, only=stage, datasets=("demo_rover",)))
                    if s.errors:
                        print("navcache: " + "; ".join(s.errors), file=sys.stderr)
                        return EXIT_FAILED
            overrides.update(cache_root=str(project.cache_root))
        cfg = load_config(config, **overrides)
    except (ConfigError, ValueError) as e:
        print(f"navcache: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(json.dumps(train_sim_heads(cfg), indent=1, default=str))
    return EXIT_OK



def predict_sim_heads_cmd(checkpoint: Path, out: Path, split: str = "val", dataset: str | None = None, cache_root: Path | None = None,
                          batch_size: int = 256, device: str = "cpu") -> int:
    """Without --dataset / --cache-root: the checkpoint's recorded ones (the cache root only while it
    still exists here), else the embedded demo's rover caches (brought up to date first, as in training)."""
    import pickle

    import torch

    from cache_specs.manifest import IncompleteCache
    from heads.sim_heads.predict import predict_split, read_checkpoint

    if not (device == "cpu" or device.startswith("cuda")) or (device.startswith("cuda") and not torch.cuda.is_available()):
        print(f"navcache: configuration error: --device {device!r}: expected cpu, or cuda[:N] on a machine with CUDA", file=sys.stderr)
        return EXIT_CONFIG
    try:
        recorded = read_checkpoint(checkpoint)["metadata"].get("config", {})
    except (FileNotFoundError, ValueError, RuntimeError, pickle.UnpicklingError, EOFError) as e:
        print(f"navcache: configuration error: --checkpoint {checkpoint}: {e}", file=sys.stderr)
        return EXIT_CONFIG
    dataset = dataset or recorded.get("dataset") or "demo_rover"
    try:
        if cache_root is None:
            rec_root = recorded.get("cache_root")
            if rec_root and Path(rec_root).is_dir():
                cache_root = Path(rec_root)
            else:
                from .runner import ExtractOptions, extract

                project = _project(None)
                project.dataset(dataset)  # a ConfigError naming the known datasets when it is not there
                for stage in ("frame-features", "rover-meta"):
                    s = extract(project, ExtractOptions(split, only=stage, datasets=(dataset,)))
                    if s.errors:
                        print("navcache: " + "; ".join(s.errors), file=sys.stderr)
                        return EXIT_FAILED
                cache_root = Path(project.cache_root)
        summary = predict_split(checkpoint, cache_root, dataset, split, out, batch_size=batch_size, device=device)
    except (ConfigError, ValueError, IncompleteCache, FileNotFoundError) as e:
        print(f"navcache: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(json.dumps(summary, indent=1))
    return EXIT_OK
