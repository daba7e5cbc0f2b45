"""Planning: which parts of which stage caches are up to date, stale or missing.

All stages of one (dataset, split) share one partition of the episodes (sorted by id, chunks of
``part_size``), so stage B's part i consumes exactly stage A's part i, and B's fingerprint can be
computed from A's *planned* fingerprint before A is even built.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cache_specs.layout import PARTS, cache_dir, part_id
from cache_specs.manifest import MANIFEST_FORMAT
from cache_specs.parts import read_part_meta

from .config import ProjectConfig
from .errors import ConfigError
from .fingerprint import FileHasher, episode_fingerprint, hash_obj
from .sources import make_source
from .sources.base import Episode, Source
from .stages import cache_name, stage_class
from .stages.base import Stage


@dataclass
class PartPlan:
    part_id: str
    episodes: list[Episode]
    fingerprint: str
    state: str  # "up-to-date" | "stale" | "missing"


@dataclass
class StagePlan:
    dataset: str
    split: str
    stage_name: str
    stage: Stage
    cache_dir: Path
    parts: list[PartPlan]
    upstream_dirs: dict[str, Path] = field(default_factory=dict)
    finalized: bool = False

    @property
    def todo(self) -> list[PartPlan]:
        return [p for p in self.parts if p.state != "up-to-date"]

    def counts(self) -> dict[str, int]:
        out = {"up-to-date": 0, "stale": 0, "missing": 0}
        for p in self.parts:
            out[p.state] += 1
        return out

    def expected(self) -> dict[str, str]:
        return {p.part_id: p.fingerprint for p in self.parts}


def make_stage(project: ProjectConfig, dataset: str, stage: str, source: Source) -> Stage:
    ds = project.dataset(dataset)
    return stage_class(stage)(project.stage_settings(stage, dataset), source, ds.options)


def stage_order(project: ProjectConfig, dataset: str, source: Source, only: str | None = None) -> list[str]:
    """The dataset's stages (or ``only`` and what it needs), upstream first."""
    ds = project.dataset(dataset)
    wanted = [only] if only else list(ds.stages)
    if only and only not in ds.stages:
        raise ConfigError(f"stage {only!r} is not configured for dataset {dataset!r} (its stages: {', '.join(ds.stages)})")
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise ConfigError(f"stage dependency cycle through {name!r}")
        visiting.add(name)
        for up in make_stage(project, dataset, name, source).consumes:
            visit(up)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name)
    return order


def partition(episodes: list[Episode], part_size: int) -> list[list[Episode]]:
    eps = sorted(episodes, key=lambda e: e.episode_id)
    return [eps[i : i + part_size] for i in range(0, len(eps), part_size)] or []


def plan_split(
    project: ProjectConfig, dataset: str, split: str, only: str | None = None, hasher: FileHasher | None = None, source: Source | None = None
) -> list[StagePlan]:
    """Plan every stage of (dataset, split). Raises DatasetError if the split cannot be listed."""
    ds = project.dataset(dataset)
    source = source or make_source(ds.source, ds.root, **ds.options)
    hasher = hasher or FileHasher()
    episodes = source.episodes(split)
    chunks = partition(episodes, ds.part_size)
    ep_fps: dict[tuple, dict[str, str]] = {}

    def fps(stage: Stage) -> dict[str, str]:
        key = (stage.reads_files, stage.record_keys)
        if key not in ep_fps:
            ep_fps[key] = {e.episode_id: episode_fingerprint(e, Path(ds.root), hasher, *key) for e in episodes}
        return ep_fps[key]
    plans: dict[str, StagePlan] = {}
    for name in stage_order(project, dataset, source, only):
        stage = make_stage(project, dataset, name, source)
        cdir = cache_dir(project.cache_root, dataset, split, cache_name(name))
        spec, dims = stage.spec(), stage.dims()
        base = {
            "spec": spec.to_json(dims, docs=False),
            "stage": name,
            "code_version": stage.code_version,
            "identity": stage.identity(),
            "source": {"kind": ds.source, "options": ds.options},
        }
        parts = []
        for i, chunk in enumerate(chunks):
            pid = part_id(i)
            upstream = {u: plans[u].parts[i].fingerprint for u in stage.consumes}
            fp = hash_obj({**base, "episodes": [fps(stage)[e.episode_id] for e in chunk], "upstream": upstream})
            meta = read_part_meta(cdir / PARTS / pid)
            # a part in another backend is stale too: a backend switch must not leave a mixed cache
            fresh = meta is not None and meta["fingerprint"] == fp and meta.get("backend") == project.backend
            state = "missing" if meta is None else ("up-to-date" if fresh else "stale")
            parts.append(PartPlan(pid, chunk, fp, state))
        sp = StagePlan(dataset, split, name, stage, cdir, parts, {u: plans[u].cache_dir for u in stage.consumes})
        sp.finalized = _manifest_matches(cdir, sp.expected())
        plans[name] = sp
    return list(plans.values())


def _manifest_matches(cdir: Path, expected: dict[str, str]) -> bool:
    from cache_specs.layout import MANIFEST, read_json

    try:
        m = read_json(cdir / MANIFEST)
    except (OSError, ValueError):
        return False
    return m.get("format") == MANIFEST_FORMAT and {k: v["fingerprint"] for k, v in m.get("parts", {}).items()} == expected
