"""The embedded demo world: a seeded procedural navigation world written in real on-disk formats.

``generate_demo(out)`` writes NaVILA / VLN-CE episodes under ``out/navila``, rover safety clips
under ``out/rover``, room tours (videos + ground-truth geometry) under ``out/videos``, short
first-person clips for the heatmaps head under ``out/glances`` (same format), VAMOS-format parquet
shards under ``out/vamos`` and a LeRobot v3.0 dataset (two cameras, state, actions) under
``out/lerobot`` for the ``train`` and ``val`` splits, so the same readers run on demo and real data.
See docs/demo_world.md for the formats and the rover label rule.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from navcache.cache_specs.labels import LABELS
from navcache.cache_specs.layout import fsync_dir, fsync_tree, private_name, sweep_stale_temporaries

from ..cores import usable_cores
from . import glance_writer, lerobot_writer, navila_writer, rover_writer, vamos_writer, video_writer

FORMAT = "navcache-demo/6"  # 4: vamos/; 5: lerobot/; 6: glances/
SPLITS = ("train", "val")
NAVILA_EPISODES = {"train": 8, "val": 3}  # at scale 1
ROVER_CLIPS = {"train": 240, "val": 80}
TOURS = {"train": 6, "val": 2}
GLANCES = {"train": 36, "val": 12}  # 16-frame clips for the heatmaps head (glance_writer)
CLIPS_PER_JOB = 8
#: the motion set (``motion/``): the NaVILA world's records without pixels at this many times the
#: scale; the GRU motion head needs ~1,600 train records to beat its baselines (BENCHMARKS.md)
MOTION_SCALE = 20
#: the LeRobot drives (``lerobot/``) at this many times the scale: 24 train / 8 val episodes, about
#: 1,100 frames, enough for the flow-matching action expert to beat its baselines on val
LEROBOT_SCALE = 4

__all__ = ["DemoInfo", "generate_demo", "demo_lock", "FORMAT"]


@dataclass(frozen=True)
class DemoInfo:
    """Where a generated demo lives and what it holds.

    counts: {"navila/train/episodes": 8, "navila/train/samples": 81, "rover/val/clips": 80, ...}.
    class_balance: {split: {head: {class: count}}} over the rover clips, every class listed.
    """

    root: Path
    navila_root: Path
    rover_root: Path
    seed: int
    scale: float
    counts: dict[str, int]
    class_balance: dict[str, dict[str, dict[str, int]]]

    @property
    def videos_root(self) -> Path:
        return self.root / "videos"

    @property
    def glances_root(self) -> Path:
        """Short 16-frame first-person clips (``glance_writer``), the heatmaps head's demo videos."""
        return self.root / "glances"

    @property
    def vamos_root(self) -> Path:
        """VAMOS-format parquet shards (``data/train-*.parquet``, ``data/validation-*.parquet``)."""
        return self.root / "vamos"

    @property
    def lerobot_root(self) -> Path:
        """A LeRobot v3.0 dataset of demo drives (a robot driving to a named box) (``lerobot_writer``; full demos only)."""
        return self.root / "lerobot"

    @property
    def motion_root(self) -> Path:
        """NaVILA annotations + poses at ``MOTION_SCALE`` x the scale, no frames (full demos only)."""
        return self.root / "motion"

    @classmethod
    def from_json(cls, root: Path, meta: dict[str, Any]) -> "DemoInfo":
        return cls(root, root / "navila", root / "rover", int(meta["seed"]), float(meta["scale"]),
                   dict(meta["counts"]), meta["class_balance"])


def _sizes(scale: float) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    def n(base: int) -> int:
        return max(1, int(round(base * scale)))  # every split keeps at least one item

    return ({s: n(NAVILA_EPISODES[s]) for s in SPLITS}, {s: n(ROVER_CLIPS[s]) for s in SPLITS},
            {s: n(TOURS[s]) for s in SPLITS})


def _call(job: tuple[Callable, tuple]) -> Any:
    fn, args = job
    return fn(*args)


def _run_all(jobs: list[tuple[Callable, tuple]], pool: ProcessPoolExecutor | None) -> list:
    """Results in job order; they never depend on the pool, since every item seeds its own generators."""
    if pool is None:
        return [_call(j) for j in jobs]
    return [f.result() for f in [pool.submit(_call, j) for j in jobs]]


def _spawn_can_import_main() -> bool:
    """A spawned worker re-imports the caller's ``__main__`` from its file; a script fed on stdin
    has no such file, so the pool would die at start-up (serial generation still works)."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return path is None or os.path.exists(path)


def _is_old_demo(out: Path) -> bool:
    """A demo written by an older navcache (another FORMAT): safe to replace."""
    try:
        return str(json.loads((out / "demo_info.json").read_text()).get("format", "")).startswith("navcache-demo/")
    except (OSError, ValueError, AttributeError):
        return False


def _read_meta(out: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((out / "demo_info.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def _same(meta: dict[str, Any] | None, seed: int, scale: float, pixels: bool) -> bool:
    """``meta`` describes the demo these arguments would write (demos before ``pixels`` had pixels)."""
    return (meta is not None and meta["seed"] == seed and float(meta["scale"]) == float(scale)
            and bool(meta.get("pixels", True)) == pixels)


def _build(tmp: Path, seed: int, scale: float, pool: ProcessPoolExecutor | None, pixels: bool = True) -> dict[str, Any]:
    n_nav, n_rov, n_tour = _sizes(scale)
    if not pixels:  # NaVILA records and poses only: the same episodes, none of the rendering
        n_rov, n_tour = dict.fromkeys(SPLITS, 0), dict.fromkeys(SPLITS, 0)
    nav_root, rov_root = tmp / "navila", tmp / "rover"
    nav_root.mkdir(parents=True)
    rov_root.mkdir(parents=True)
    # one flat job list (long NaVILA episodes first) keeps every worker busy until the end
    jobs: list[tuple[Callable, tuple]] = []
    where: dict[tuple[str, str], slice] = {}
    if pixels:  # the longest job, first: one writer for both splits (LeRobot splits by info.json ranges)
        where["lerobot", "all"] = slice(0, 1)
        jobs.append((lerobot_writer.write_lerobot_dataset, (tmp / "lerobot", "v3.0", seed, scale * LEROBOT_SCALE)))
    for split in SPLITS:
        start = len(jobs)
        jobs += [(navila_writer.write_episode, (nav_root, seed, split, i)) if pixels else
                 (navila_writer.trajectory_records, (seed, split, i)) for i in range(n_nav[split])]
        where["navila", split] = slice(start, len(jobs))
    for split in SPLITS:
        start = len(jobs)
        jobs += [(video_writer.write_tour, (tmp, seed, split, i)) for i in range(n_tour[split])]
        where["videos", split] = slice(start, len(jobs))
    for split in SPLITS:
        start = len(jobs)
        jobs += [(rover_writer.write_clips, (rov_root, seed, split, range(i, min(i + CLIPS_PER_JOB, n_rov[split]))))
                 for i in range(0, n_rov[split], CLIPS_PER_JOB)]
        where["rover", split] = slice(start, len(jobs))
    if pixels:
        for split in SPLITS:
            start = len(jobs)
            jobs += [(vamos_writer.episode_rows, (seed, sp, i, n)) for sp, i, n in vamos_writer.sample_jobs(seed, split, scale)]
            where["vamos", split] = slice(start, len(jobs))
        for split in SPLITS:
            start = len(jobs)
            jobs += [(glance_writer.write_glance, (tmp, seed, split, i)) for i in range(max(1, int(round(GLANCES[split] * scale))))]
            where["glances", split] = slice(start, len(jobs))
        for split in SPLITS:
            start = len(jobs)
            n_motion = max(1, int(round(NAVILA_EPISODES[split] * scale * MOTION_SCALE)))
            jobs += [(navila_writer.trajectory_records, (seed, split, i)) for i in range(n_motion)]
            where["motion", split] = slice(start, len(jobs))
    results = _run_all(jobs, pool)

    counts: dict[str, int] = {}
    if pixels:
        lr = results[where["lerobot", "all"]][0]
        counts["lerobot/episodes"], counts["lerobot/frames"] = lr["episodes"], lr["frames"]
    balance: dict[str, dict[str, dict[str, int]]] = {}
    for split in SPLITS:
        parts = results[where["navila", split]]
        navila_writer.write_index(nav_root, split, parts)
        counts[f"navila/{split}/episodes"] = n_nav[split]
        counts[f"navila/{split}/samples"] = sum(len(recs) for recs, _ in parts)
        counts[f"navila/{split}/frames"] = sum(len(recs[-1]["frames"]) for recs, _ in parts)
        if not pixels:
            continue
        (tmp / "motion").mkdir(exist_ok=True)
        navila_writer.write_index(tmp / "motion", split, results[where["motion", split]])
        counts[f"motion/{split}/episodes"] = len(results[where["motion", split]])
        counts[f"motion/{split}/samples"] = sum(len(recs) for recs, _ in results[where["motion", split]])
        tours = results[where["videos", split]]
        counts[f"videos/{split}/tours"] = len(tours)
        counts[f"videos/{split}/frames"] = sum(r["n_frames"] for r in tours)
        counts[f"glances/{split}/clips"] = len(results[where["glances", split]])
        rows = [row for batch in results[where["rover", split]] for row in batch]
        rover_writer.write_parquet(rov_root, split, rows)
        counts[f"rover/{split}/clips"] = len(rows)
        vamos_rows = [row for batch in results[where["vamos", split]] for row in batch]
        vamos_writer.write_shards(tmp / "vamos", split, vamos_rows, scale)
        counts[f"vamos/{split}/samples"] = len(vamos_rows)
        balance[split] = {head: {c: Counter(r[head] for r in rows)[c] for c in classes} for head, classes in LABELS.items()}
    return {"format": FORMAT, "seed": seed, "scale": scale, "pixels": pixels, "navila": "navila", "rover": "rover", "videos": "videos", "glances": "glances",
            "cameras": {"navila": navila_writer.NAVILA_CAM.intrinsics(), "rover": rover_writer.ROVER_CAM.intrinsics(),
                        "videos": video_writer.TOUR_CAM.intrinsics(), "vamos": vamos_writer.VAMOS_CAM.intrinsics()},
            "counts": counts, "class_balance": balance}


def generate_demo(out: Path, scale: float = 1.0, seed: int = 0, workers: int | None = None,
                  pixels: bool = True, lock: bool = True) -> DemoInfo:
    """Write the demo datasets under ``out`` (``out/navila``, ``out/rover``) and describe them.

    Deterministic in (seed, scale). Returns at once when ``out/demo_info.json`` already records the
    same seed and scale. Builds into a sibling ``<out>.tmp-<pid>-<random>`` folder and renames it into
    place, so a crash never leaves a half-written demo at ``out`` (a later build sweeps a killed
    one's folder: ``sweep_stale_temporaries``). ``workers``: processes to use
    (None: one per CPU, at most 8; 1: no pool; a script read from stdin always runs serially). Raises FileExistsError rather than replace an
    ``out`` that is not empty and is not a demo.

    ``pixels=False`` writes only the NaVILA annotations and pose files, identical to the full demo's:
    enough for the ``poses`` stage and ``gru-motion`` at scales where rendering would dominate. The
    frames those records list do not exist, so pixel stages quarantine them; no rover or tours.

    Concurrent calls generate once: the build runs under ``demo_lock(out)`` (``lock=False``: the
    caller holds it), and the files are fsynced before the rename that publishes them.
    """
    out = Path(out)
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    meta = _read_meta(out)
    if _same(meta, seed, scale, pixels):
        return DemoInfo.from_json(out, meta)
    if not lock:
        return _generate(out, scale, seed, workers, pixels)
    with demo_lock(out):
        return _generate(out, scale, seed, workers, pixels)


def demo_lock(out: Path):
    """The lease under which the demo at ``out`` is generated (``.tmp-lease-<name>`` beside it,
    gone once released), so concurrent runs generate it once: ``with demo_lock(out): ...``."""
    from ..leases import hold, lease_path

    return hold(lease_path(Path(out).parent, Path(out).name))


def _generate(out: Path, scale: float, seed: int, workers: int | None, pixels: bool) -> DemoInfo:
    meta = _read_meta(out)
    if _same(meta, seed, scale, pixels):
        return DemoInfo.from_json(out, meta)  # a concurrent run generated it while we waited
    if out.exists() and meta is None and any(out.iterdir()) and not _is_old_demo(out):
        raise FileExistsError(f"{out} exists, is not empty and holds no demo_info.json; not replacing it")
    workers = min(usable_cores(), 8) if workers is None else max(1, int(workers))
    if not _spawn_can_import_main():
        workers = 1
    out.parent.mkdir(parents=True, exist_ok=True)
    # a killed build leaves its folder (the whole demo so far, possibly gigabytes): sweep those
    sweep_stale_temporaries(out.parent, f"{out.name}.tmp")
    tmp = out.with_name(private_name("", f"{out.name}.tmp"))
    try:
        if workers > 1:
            # spawn, not fork: callers may hold torch/dask threads, and forking those can deadlock
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                meta = _build(tmp, seed, float(scale), pool, pixels)
        else:
            meta = _build(tmp, seed, float(scale), None, pixels)
        # demo_info.json last: its presence marks a complete demo
        (tmp / "demo_info.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        fsync_tree(tmp)  # a rename must never publish files whose data is not on disk yet
        done = _read_meta(out)
        if _same(done, seed, scale, pixels):
            return DemoInfo.from_json(out, done)  # a concurrent call finished the same demo first
        old = out.with_name(private_name("", f"{out.name}.old"))
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        fsync_dir(out.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sweep_stale_temporaries(out.parent, f"{out.name}.old")  # set aside by a build killed between renames
    return DemoInfo.from_json(out, meta)
