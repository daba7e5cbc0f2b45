"""``extract``: plan every stage of every dataset for a split, build what is missing or stale, finalise.

Per stage: plan (``plan.py``) -> build the todo parts (an executor) -> finalise (one call into
``cache_specs.finalize``: compaction, stats, index, manifest, sweeping). Shard jobs skip the last step.

Exit semantics (see cli.py): dataset-level errors are collected and reported, never raised
mid-run, so one broken dataset does not stop the others.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from navcache.cache_specs.finalize import finalize, sweep
from navcache.cache_specs.layout import PARTS
from navcache.cache_specs.manifest import invalidate
from navcache.cache_specs.parts import read_part_meta

from .config import ProjectConfig, check_cache_root
from .errors import DatasetError, NavcacheError
from .fingerprint import FileHasher
from .plan import StagePlan, plan_split
from .sources import make_source
from .summary import RunSummary, StageSummary, brief_report

log = logging.getLogger("navcache")


@dataclass(frozen=True)
class ExtractOptions:
    split: str = "train"
    only: str | None = None
    datasets: tuple[str, ...] = ()
    executor: str = "local"  # "local" | "dask" | "slurm" (dask workers as SLURM jobs; workers = jobs) | "gpus" (one worker per GPU)
    workers: int = 2
    scheduler: str | None = None
    shard: tuple[int, int] | None = None  # (i, n): build new parts of group % n == i
    dry_run: bool = False

    def __post_init__(self):
        if self.executor not in ("local", "dask", "slurm", "gpus"):
            raise ValueError(f"executor must be 'local', 'dask', 'slurm' or 'gpus', got {self.executor!r}")
        if self.shard is not None and not (0 <= self.shard[0] < self.shard[1]):
            raise ValueError(f"shard must be I/N with 0 <= I < N, got {self.shard[0]}/{self.shard[1]}")


class Reporter:
    """Progress hooks; the CLI plugs rich progress bars in, tests and batch jobs use the silent default."""

    def stage_start(self, sp: StagePlan, episodes: int) -> Callable[[int, int], None]:
        return lambda e, f: None

    def stage_end(self, sp: StagePlan) -> None:
        pass


def check_selection(project: ProjectConfig, opts: ExtractOptions) -> None:
    """A ConfigError (listing the valid names and the closest) when ``--split``, ``--only`` or
    ``--dataset`` names nothing in the project: a typo must never be an empty success."""
    from navcache.cache_specs.config import unknown_name

    for name in opts.datasets:
        if name not in project.datasets:
            raise unknown_name("dataset", name, list(project.datasets), "--dataset")
    chosen = [d for n, d in project.datasets.items() if not opts.datasets or n in opts.datasets]
    splits = sorted({s for d in chosen for s in d.splits})
    if opts.split not in splits:
        raise unknown_name("split", opts.split, splits, "--split")
    stages = list(dict.fromkeys(st for d in chosen for st in d.stages))
    if opts.only and opts.only not in stages:
        raise unknown_name("stage", opts.only, stages, "--only")


def plan_all(project: ProjectConfig, opts: ExtractOptions, summary: RunSummary, hasher: FileHasher) -> list[StagePlan]:
    """Every stage plan of the selected datasets for ``opts.split``; a dataset without that split or
    stage is skipped with a note in ``summary.skipped``; listing errors go to ``summary.errors``."""
    check_selection(project, opts)
    return _plan_selected(project, opts, summary, hasher)


def _plan_selected(project: ProjectConfig, opts: ExtractOptions, summary: RunSummary, hasher: FileHasher, ahead=None) -> list[StagePlan]:
    plans: list[StagePlan] = []
    seen: dict = {}  # each model is located once per run, whichever datasets share it
    for name, ds in project.datasets.items():
        if opts.datasets and name not in opts.datasets:
            continue
        if opts.split not in ds.splits:
            summary.skipped.append(f"dataset {name} has no split {opts.split!r} (its splits: {', '.join(ds.splits)})")
            continue
        if opts.only and opts.only not in ds.stages:
            summary.skipped.append(f"dataset {name} has no stage {opts.only!r} (its stages: {', '.join(ds.stages)})")
            continue
        try:
            ds = project.dataset(name)
            source = make_source(ds.source, ds.root, **ds.options)
            if hasattr(source, "decoded"):  # the run's budget for frames decoded once (speed only)
                source.decoded.max_bytes = project.run.decoded_frames_mb << 20
            check_providers(project, name, source, opts.only, seen)
            plans += plan_split(project, name, opts.split, opts.only, hasher, source=source, ahead=ahead)
        except (DatasetError, NavcacheError, OSError) as e:
            log.debug("dataset %s split %s", name, opts.split, exc_info=True)  # the traceback with --debug
            summary.errors.append(f"dataset {name} split {opts.split}: {e}")
            continue
        except Exception as e:  # noqa: BLE001 - input no check foresaw must not stop the other datasets
            summary.errors.append(f"dataset {name} split {opts.split}: listing failed: {type(e).__name__}: {e}")
            continue
        report = getattr(source, "report", None)
        if report:
            summary.sources[f"{name}/{opts.split}"] = brief_report(report)
    return plans


def check_providers(project: ProjectConfig, dataset: str, source, only: str | None = None, seen: dict | None = None) -> None:
    """Every stage the dataset would run can run here: its model importable, its weights local or
    reachable (``Stage.check``); NavcacheError naming the field otherwise. Before planning, whose
    ``dims()`` would otherwise ask the hub (retrying for over a minute) for an unreachable id."""
    from .plan import make_stage, stage_order

    for stage_name in stage_order(project, dataset, source, only):
        make_stage(project, dataset, stage_name, source).check(seen)


def extract(project: ProjectConfig, opts: ExtractOptions, reporter: Reporter | None = None) -> RunSummary:
    reporter = reporter or Reporter()
    check_selection(project, opts)  # before anything is created under the cache root
    if not opts.dry_run:
        check_cache_root(project.cache_root)  # a ConfigError with the OS reason, not a traceback later
    summary = RunSummary(dry_run=opts.dry_run)
    hasher = FileHasher(Path(project.cache_root) / ".navcache" / "filehash.sqlite")
    try:
        with _Ahead(enabled=not opts.dry_run and opts.executor == "local") as ahead:
            try:
                plans = _plan_selected(project, opts, summary, hasher, ahead if ahead.enabled else None)
                _build_all(project, opts, reporter, summary, plans)
            finally:
                for e in ahead.wait():  # the background fingerprinting shares the hasher
                    if not any(str(e) in err for err in summary.errors):
                        summary.errors.append(f"planning failed: {type(e).__name__}: {e}")
            if not opts.dry_run:
                hasher.prune()  # rows of files gone or changed since hashed: they could only grow the memo
    finally:
        hasher.close()
    return summary


#: niceness added to the thread computing a first extract's fingerprints (as decode threads)
PLAN_NICE = 5


class _Ahead:
    """What an extract starts before its plan is complete (``plan.Ahead``), on background threads:

    - ``load``: the encoders of stages that will build whatever the hashes say load while the
      input files are listed and hashed (seconds each for real models). A load that fails here is
      left for the build's own ``setup`` to raise and report.
    - ``later``: a first extract's fingerprints (``plan._plan_fresh``), computed as the build
      reaches each part; ``wait`` ends the job (parts never reached stay unhashed) and returns
      what it raised (the build saw it too, at a part's commit).
    Only for local builds: other executors load in their workers and ship complete plans."""

    def __init__(self, enabled: bool):
        from concurrent.futures import ThreadPoolExecutor

        self.enabled = enabled
        self._loads = ThreadPoolExecutor(1, thread_name_prefix="navcache-warm") if enabled else None
        self._jobs: list = []
        self._later: list = []

    def load(self, stage) -> None:
        if stage.setup_ahead:
            self._loads.submit(_setup_quietly, stage)

    def later(self, fn, drain) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from .executors.local import lower_thread_priority

        # a thread of its own per job: a job waits for its build to ask for parts, so jobs queued
        # on one thread would wait on each other (a split's build for the parts of one built
        # before it that its build never reached: a failed stage, a shard). Niced as the decode
        # threads, below the main and device threads: lower still (+10) left parts waiting for
        # their fingerprints (measured); the hashing threads it starts inherit the priority
        pool = ThreadPoolExecutor(1, thread_name_prefix="navcache-plan", initializer=lower_thread_priority, initargs=(PLAN_NICE,))
        self._jobs.append(pool)
        self._later.append((pool.submit(fn), drain))

    def wait(self) -> list[BaseException]:
        done, self._later = self._later, []
        for _, drain in done:
            drain()
        return [e for e in (f.exception() for f, _ in done) if e is not None]

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for pool in self._jobs:
            pool.shutdown(wait=True, cancel_futures=True)
        if self._loads is not None:
            # not waited for: a build that needed the model waited for its load in its own
            # ``setup``, so a load still running is one nothing needs (it starts before the
            # listing: a split whose listing failed). Its error is reported at once, the load
            # left to end on its own (seconds for a big model)
            self._loads.shutdown(wait=False, cancel_futures=True)


def _setup_quietly(stage) -> None:
    try:
        stage.setup()
    except Exception:  # noqa: BLE001 - the build calls setup again and reports the error there
        log.debug("loading %s ahead of its build failed", stage.name, exc_info=True)


def _build_all(project: ProjectConfig, opts: ExtractOptions, reporter: Reporter, summary: RunSummary, plans: list[StagePlan]) -> None:
    """Build every plan's todo parts (downstream of a failed stage: skipped), then finalise."""
    failed: set[tuple[str, str]] = set()  # (dataset, stage) whose build failed: skip its downstream
    built: list[tuple[StagePlan, StageSummary]] = []
    cluster = _cluster(project, opts)
    try:
        for sp in plans:
            ss = StageSummary(sp.dataset, sp.split, sp.stage_name, str(sp.cache_dir), parts_total=len(sp.parts))
            summary.stages.append(ss)
            todo = sp.todo
            if opts.shard is not None:
                todo = [p for p in todo if p.group % opts.shard[1] == opts.shard[0]]
            ss.parts_skipped = len(sp.parts) - len(todo)
            if opts.dry_run:
                continue
            if any((sp.dataset, u) in failed for u in sp.stage.consumes):
                summary.errors.append(f"{sp.dataset}/{sp.split}/{sp.stage_name}: skipped, an upstream stage failed")
                failed.add((sp.dataset, sp.stage_name))
                continue
            if _build_stage(project, sp, todo, opts, reporter, ss, summary, cluster):
                built.append((sp, ss))
            else:
                failed.add((sp.dataset, sp.stage_name))
    finally:
        if cluster is not None:
            cluster.close()
    # finalising compacts and sweeps upstream parts: only once every downstream build has read them
    for sp, ss in built if opts.shard is None else ():
        try:
            _finalize(project, sp)
            ss.finalized = True
        except Exception as e:  # noqa: BLE001 - e.g. a part replaced by a stray writer, stats unreadable
            log.exception("finalizing %s failed", sp.cache_dir)
            summary.errors.append(f"{sp.dataset}/{sp.split}/{sp.stage_name}: not finalized: {type(e).__name__}: {e}")


def _cluster(project: ProjectConfig, opts: ExtractOptions):
    """The run's one dask cluster for ``slurm`` / ``gpus`` (started on first use, so a run with
    nothing to build submits no job), else None (``dask`` starts a LocalCluster per stage build)."""
    if opts.dry_run:
        return None
    if opts.executor == "slurm":
        from .executors.slurm_cluster import SlurmClient

        return SlurmClient(project.slurm, opts.workers, str(Path(project.cache_root) / ".navcache" / "slurm" / "workers"))
    if opts.executor == "gpus":
        from .executors.gpu_workers import GpuClient

        return GpuClient(project.gpus)
    return None


def _build_stage(project: ProjectConfig, sp: StagePlan, todo, opts: ExtractOptions, reporter: Reporter, ss: StageSummary, summary: RunSummary,
                 cluster=None) -> bool:
    """Build ``todo`` and count the layout's quarantine; False (error recorded) if the build failed."""
    t0 = time.perf_counter()
    if todo:
        if not _shared(opts):  # shared runs invalidate once they build a part (``_build_shared``)
            invalidate(sp.cache_dir)  # the cache no longer matches its inputs: it stops looking complete
        progress = reporter.stage_start(sp, sum(len(p.episodes) for p in todo))
        try:
            metas = _build(project, sp, todo, opts, progress, cluster)
        except Exception as e:  # noqa: BLE001 - report, keep other datasets going
            # a known error's message says it all; its traceback only with --debug
            (log.debug if isinstance(e, NavcacheError) else log.exception)("stage %s failed", sp.stage_name, exc_info=True)
            summary.errors.append(f"{sp.dataset}/{sp.split}/{sp.stage_name}: {type(e).__name__}: {e}")
            reporter.stage_end(sp)
            return False
        reporter.stage_end(sp)
        ss.parts_built = len(metas)
        ss.episodes_built = sum(m["n_episodes"] for m in metas)
        ss.frames_built = sum(m["n_rows"] for m in metas) if sp.stage.spec().row == "frame" else 0
    ss.seconds = time.perf_counter() - t0
    _count_quarantine(sp, ss)  # before finalising: compaction may move rows out of the plan's parts
    return True


def _build(project: ProjectConfig, sp: StagePlan, todo, opts: ExtractOptions, progress, cluster=None) -> list[dict]:
    if opts.executor in ("dask", "slurm", "gpus"):
        from .executors.dask_exec import build_parts_dask

        client = cluster.get() if cluster is not None else None
        return build_parts_dask(project, sp, todo, opts.workers, opts.scheduler, progress, client=client)
    if _shared(opts):
        return _build_shared(project, sp, todo, progress)
    from .executors.local import build_parts

    return build_parts(sp, todo, project.backend, project.chunk_rows, project.run, progress)


def _shared(opts: ExtractOptions) -> bool:
    """Un-sharded local runs claim their parts, so concurrent runs in one cache split the work;
    shard jobs are disjoint by construction, dask tasks are placed by their scheduler."""
    return opts.shard is None and opts.executor == "local"


def _build_shared(project: ProjectConfig, sp: StagePlan, todo, progress) -> list[dict]:
    """Build the parts of ``todo`` this run claims, waiting for those other runs hold; return the
    part.json of the parts built here.

    First one pipeline over every part free now, each claimed as the decode window reaches it and
    released once committed (``leases.claim_free``): the encoder never waits for a pipeline to drain
    and refill between parts. Then ``leases.share_work`` for what others held (built by them, or
    taken over if they died)."""
    from contextlib import closing
    from itertools import chain

    from .executors.local import build_parts
    from .leases import claim_free, share_work

    folder, name = sp.cache_dir / PARTS, (lambda p: p.part_id)
    done = lambda p: sp.committed(p, project.backend)  # noqa: E731
    metas: list[dict] = []
    held: dict[str, object] = {}
    started = False

    def claimed():
        nonlocal started
        for part, lease in claim_free(todo, folder, name, done, project.run.lease_timeout_s):
            if not started:
                # before this run's first part: a run that built nothing must not un-finalise a
                # manifest a concurrent run may have written meanwhile
                invalidate(sp.cache_dir)
                started = True
            held[part.part_id] = lease
            yield part

    def written(part) -> None:  # on the writer thread, once the part is committed
        lease = held.pop(part.part_id, None)
        if lease is not None:
            lease.release()

    try:
        parts = claimed()
        first = next(parts, None)  # claimed (and the cache invalidated) before the model loads, which may fail
        if first is not None:
            metas += build_parts(sp, chain([first], parts), project.backend, project.chunk_rows, project.run, progress, on_written=written)
    finally:
        for lease in list(held.values()):
            lease.release()
    batches = share_work(todo, folder, name, done, project.run.lease_timeout_s)
    with closing(batches):
        for batch in batches:
            if not started:
                invalidate(sp.cache_dir)
                started = True
            metas += build_parts(sp, batch, project.backend, project.chunk_rows, project.run, progress)
    return metas


def _finalize(project: ProjectConfig, sp: StagePlan) -> None:
    """Finalise under the cache's lease; if a concurrent run finalised this same content since
    planning, only sweep (its compaction may have removed parts this plan names)."""
    from .leases import hold, lease_path
    from .plan import finalised_since

    with hold(lease_path(sp.cache_dir / PARTS, "finalize"), project.run.lease_timeout_s):
        done = finalised_since(sp)
        if done is not None:
            sweep(sp.cache_dir, set(done["parts"]))
            return
        finalize(sp.cache_dir, sp.layout(), sp.expected(), _info(project, sp), sp.stage.cache_stats,
                 part_size=sp.part_size, chunk_rows=project.chunk_rows)


def _info(project: ProjectConfig, sp: StagePlan) -> dict:
    """What the manifest says about the stage besides its parts (``finalize`` adds stats)."""
    ds = project.dataset(sp.dataset)
    return {
        "stage": sp.stage_name,
        "dataset": sp.dataset,
        "split": sp.split,
        "backend": project.backend,
        "code_version": sp.stage.code_version,
        "identity": sp.stage.identity(),
        "provenance": sp.stage.provenance(),
        "source": {"kind": ds.source, "options": ds.options},
    }


def _count_quarantine(sp: StagePlan, ss: StageSummary) -> None:
    """Ok / quarantined episodes of the plan's layout (a part's dead rows are not counted)."""
    for p in sp.parts:
        meta = read_part_meta(sp.cache_dir / PARTS / p.part_id)
        if meta is None:
            continue
        status = {e["episode_id"]: e for e in meta["episodes"]}
        for ep in p.episodes:
            e = status.get(ep.episode_id)
            if e is None:
                continue
            if e["status"] == "ok":
                ss.episodes_ok += 1
            else:
                ss.episodes_quarantined += 1
                ss.quarantined.append({"episode_id": e["episode_id"], "reason": e["reason"]})
