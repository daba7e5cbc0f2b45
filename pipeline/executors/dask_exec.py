"""The dask executor: one idempotent task per part.

A task rebuilds its stage from the (plain-data) project config inside the worker process, then runs
the local executor for that single part, which commits it by atomic rename. If a worker dies
mid-part, the scheduler reruns the task elsewhere; the dead worker's temporary folder is an orphan
that finalisation deletes, and a retried task whose part already exists with the same fingerprint
keeps the existing one. So a part is never duplicated nor lost, and one writer owns each shard.
The ``PartPlan`` shipped to the worker carries its episodes' fingerprints and where each upstream
episode lives, so the worker needs no planning of its own.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..config import ProjectConfig, config_from_dict
from ..plan import PartPlan, StagePlan, make_stage

# Per worker process: loaded stages (and their encoder weights), so a worker loads a model once,
# not once per part. Keyed by everything that defines the stage.
_WORKER_STAGES: dict[tuple, object] = {}


def _worker_stage(project_dict: dict, dataset: str, stage_name: str):
    from ..fingerprint import hash_obj
    from ..sources import make_source

    key = (hash_obj(project_dict), dataset, stage_name)
    if key not in _WORKER_STAGES:
        project = config_from_dict(project_dict, Path("/"), origin=project_dict.get("origin", "file"))
        ds = project.dataset(dataset)
        source = make_source(ds.source, ds.root, **ds.options)
        _WORKER_STAGES[key] = (project, make_stage(project, dataset, stage_name, source))
    return _WORKER_STAGES[key]


def build_one_part(project_dict: dict, dataset: str, split: str, stage_name: str, cache_dir: str, upstream_dirs: dict, part: PartPlan) -> dict:
    """Runs inside a dask worker. Returns the committed part.json content."""
    from .local import build_parts

    project, stage = _worker_stage(project_dict, dataset, stage_name)
    sp = StagePlan(dataset, split, stage_name, stage, Path(cache_dir), [part], {k: Path(v) for k, v in upstream_dirs.items()})
    # The worker already runs one task per thread slot: keep decoding threads modest.
    return build_parts(sp, [part], project.backend, project.chunk_rows, project.run)[0]


def make_client(workers: int, scheduler: str | None):
    from dask.distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler), None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR)
    return Client(cluster), cluster


def build_parts_dask(project: ProjectConfig, sp: StagePlan, parts: list[PartPlan], workers: int, scheduler: str | None, progress=None, client=None) -> list[dict]:
    from dask.distributed import as_completed

    own = client is None
    cluster = None
    if own:
        client, cluster = make_client(workers, scheduler)
    try:
        pdict = project.to_dict()
        futures = [
            client.submit(
                build_one_part, pdict, sp.dataset, sp.split, sp.stage_name, str(sp.cache_dir), {k: str(v) for k, v in sp.upstream_dirs.items()}, p,
                key=f"navcache-{sp.dataset}-{sp.split}-{sp.stage_name}-{p.part_id}-{p.fingerprint[:12]}",
                pure=False,
                retries=2,
            )
            for p in parts
        ]
        metas = []
        for fut in as_completed(futures):
            meta = fut.result()
            metas.append(meta)
            if progress:
                progress(meta["n_episodes"], meta["n_rows"])
        return sorted(metas, key=lambda m: m["part"])
    finally:
        if own:
            client.close()
            if cluster is not None:
                cluster.close()
