"""Planning: which episodes each stage must encode, and which committed parts hold the others.

The unit of recompute is the episode. A stage fingerprints each episode:

    hash(stage base: spec, stage, code version, identity, source kind + options;
         the record fields the stage reads and the content of the files it reads;
         the fingerprints of the same episode in the upstream stages it consumes)

Every part records the fingerprint of each episode it holds. Planning reads the stage's last
FINALISED manifest (``manifest.json``, or the copy ``invalidate`` retired: shard jobs never change
either) and keeps each episode whose fingerprint a listed part holds, in that part (live or dead
row alike: a reverted change costs nothing). The rest, new and changed episodes, is *todo*.

Grouping the todo episodes into new parts: stages linked by ``consumes`` form a chain; the union of
their todo episodes, sorted by id, is cut into groups of ``part_size``, numbered across the split's
chains; a stage's new part for group k holds its todo episodes of group k. So a downstream part
reads its upstream episodes from the upstream part of the same group (the same shard builds it:
``group % N``) or from upstream parts already finalised. New parts are named ``part-NNNNN`` with the
lowest numbers the base manifest does not list (a setting changed and changed back ends with the
names a fresh build gives; a part lost to damage is rebuilt under its own name), and fingerprinted
by their content (``part_fingerprint``). The plan
is a function of the source and the last finalised manifests only, so shard jobs, dask workers, a
rerun after a kill and an uninterrupted run agree on it, part for part.

A first extract (no stage of the split has a finalised part or anything in its part folder)
builds every episode whatever the hashes say, so its parts are known from the listing alone:
``plan_split(ahead=...)`` returns them before hashing, as ``PendingPart``s whose fingerprints a
background thread fills in as the build reaches each part (a part's commit waits for them). The plan
they resolve to is the one full planning gives (``tests/pipeline/test_plan_fresh.py``).
"""
from __future__ import annotations

import functools
import gc
import heapq
import json
import os
import threading
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from navcache.cache_specs.layout import INDEX, MANIFEST, PARTS, cache_dir, part_id
from navcache.cache_specs.manifest import MANIFEST_FORMAT, MANIFEST_SHA_KEY, last_finalized
from navcache.cache_specs.parts import PART_FORMAT, free_numbers, part_fingerprint, part_number, read_part_meta

from .config import ProjectConfig
from .errors import ConfigError
from .fingerprint import FileHasher, episode_fingerprints, stage_fingerprints
from .fingerprint_memo import FingerprintMemo
from .listing_memo import ListingMemo
from .plan_types import Ahead, Location, PartPlan, PendingPart, StagePlan
from .sources import make_source
from .sources.base import Episode, Source
from .stages import cache_name, stage_class
from .stages.base import Stage

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


@dataclass
class _Base:
    """What the last finalised manifest offers: (episode id, episode fingerprint) -> its part."""

    holders: dict[tuple[str, str], tuple[str, str]]
    #: part numbers the manifest lists: new parts take the lowest numbers not among them
    taken: set[int]
    #: episode id -> part of its live rows in the last finalised index (empty if unreadable)
    live: dict[str, str] = field(default_factory=dict)
    #: part fingerprint -> id of every part the manifest lists (a lost part is rebuilt under its id)
    names: dict[str, str] = field(default_factory=dict)


def _read_base(cdir: Path, backend: str) -> _Base:
    m = last_finalized(cdir)
    if m is None:
        return _Base({}, set())
    live = _live_rows(cdir, m)
    holders: dict[tuple[str, str], tuple[str, str]] = {}
    numbers = set()
    names: dict[str, str] = {}
    for pid, rec in sorted(m["parts"].items()):  # sorted: of two copies, the lower part id wins
        numbers.add(part_number(pid))
        names.setdefault(str(rec.get("fingerprint")), pid)
        meta = read_part_meta(cdir / PARTS / pid)
        if meta is None or meta.get("format") != PART_FORMAT or meta["fingerprint"] != rec.get("fingerprint") or meta.get("backend") != backend:
            continue  # gone, damaged, replaced or in another backend: its episodes are todo
        for e in meta["episodes"]:
            if e.get("fingerprint"):
                holders.setdefault((e["episode_id"], e["fingerprint"]), (pid, meta["fingerprint"]))
    return _Base(holders, numbers, live, names)


def _live_rows(cdir: Path, m: dict) -> dict[str, str]:
    import pyarrow.parquet as pq

    from navcache.cache_specs.layout import sha256_file

    try:
        if sha256_file(cdir / INDEX) != m.get("index_sha256"):
            return {}  # rewritten by a finalisation killed before its manifest: not this base's
        t = pq.read_table(cdir / INDEX, columns=["episode_id", "part"]).to_pydict()
    except (OSError, ValueError):
        return {}
    return dict(zip(t["episode_id"], t["part"]))


def plan_split(
    project: ProjectConfig, dataset: str, split: str, only: str | None = None, hasher: FileHasher | None = None, source: Source | None = None,
    ahead: Ahead | None = None,
) -> list[StagePlan]:
    """Plan every stage of (dataset, split). Raises DatasetError if the split cannot be listed.

    With ``ahead`` (an extract building locally), a stage that will build every episode whatever
    the hashes say (no finalised part to keep) starts loading its weights before the inputs are
    listed; and when that holds for every stage of the split and nothing lies in their part
    folders (a first extract), the plan returns before hashing: its parts are ``PendingPart``s
    whose fingerprints ``ahead.later`` computes as the build reaches each part (``_plan_fresh``)."""
    with gc_paused():
        return _plan_split(project, dataset, split, only, hasher, source, ahead)


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block, as it was after.

    Planning allocates a dozen objects per input file (parsed JSON, paths, keys) and frees few
    until the end: every ~700 allocations CPython walked all surviving containers again, half of
    the listing's time at 100K files (measured: 0.85 s -> 0.40 s). Reference counting still frees
    everything; the few reference cycles wait for the next full collection.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # what the block allocated goes to the oldest generation unscanned (freeze + unfreeze
        # merge the generation lists), so re-enabling does not start with one collection
        # walking all of it (0.1-0.2 s at 100K files); a later full collection sees it as usual
        gc.freeze()
        gc.unfreeze()
        if was:
            gc.enable()


def _plan_split(
    project: ProjectConfig, dataset: str, split: str, only: str | None, hasher: FileHasher | None, source: Source | None,
    ahead: Ahead | None = None,
) -> list[StagePlan]:
    ds = project.dataset(dataset)
    source = source or make_source(ds.source, ds.root, **ds.options)
    hasher = hasher or FileHasher()
    names = stage_order(project, dataset, source, only)
    stages = {n: make_stage(project, dataset, n, source) for n in names}
    cdirs = {n: cache_dir(project.cache_root, dataset, split, cache_name(n)) for n in names}
    bases = {n: _read_base(cdirs[n], project.backend) for n in names}
    if ahead is not None:
        for n in names:
            if not bases[n].holders:
                ahead.load(stages[n])
    if getattr(source, "memoised_listing", False):  # see pipeline/listing_memo.py
        listed = source.episodes(split, memo=ListingMemo.at(project.cache_root, dataset, split))
    else:
        listed = source.episodes(split)
    episodes = sorted(listed, key=lambda e: e.episode_id)
    memo = FingerprintMemo.open(project.cache_root, dataset, split, getattr(source, "listing_token", None))
    fingerprinter = _Fingerprinter(project, dataset, stages, memo, hasher)
    if ahead is not None and episodes and all(not bases[n].taken and _empty(cdirs[n] / PARTS) for n in names):
        return _plan_fresh(dataset, split, names, stages, cdirs, episodes, ds.part_size, project.backend, fingerprinter, ahead)
    efps = {n: fingerprinter(n, episodes) for n in names}
    fingerprinter.close()
    kept: dict[str, dict[str, tuple[str, str]]] = {}
    todo: dict[str, list[Episode]] = {}
    for name in names:
        kept[name] = {}
        todo[name] = []
        for e in episodes:
            where = bases[name].holders.get((e.episode_id, efps[name][e.episode_id]))
            if where is None:
                todo[name].append(e)
            else:
                kept[name][e.episode_id] = where
    groups = _group(names, stages, todo, ds.part_size)
    plans: dict[str, StagePlan] = {}
    for name in names:
        stage, fps, cdir = stages[name], efps[name], cdirs[name]
        by_part: dict[tuple[str, str], list[Episode]] = {}
        for e in episodes:
            if e.episode_id in kept[name]:
                by_part.setdefault(kept[name][e.episode_id], []).append(e)
        parts = [PartPlan(pid, eps, pfp, "up-to-date", -1, {e.episode_id: fps[e.episode_id] for e in eps}) for (pid, pfp), eps in sorted(by_part.items())]
        free = free_numbers(bases[name].taken)
        for k, eps in groups[name]:
            parts.append(_new_part(cdir, bases[name], free, k, eps, fps, project.backend))
        ups = {u: plans[u].locations() for u in stage.consumes}
        for p in parts:
            if p.group >= 0:
                p.upstream = _upstream_of(p, stage, ups)
        sp = StagePlan(dataset, split, name, stage, cdir, parts, {u: plans[u].cache_dir for u in stage.consumes},
                       part_size=ds.part_size)
        sp.superseded = {pid for eid, pid in bases[name].live.items() if kept[name].get(eid, ("",))[0] != pid}
        sp.finalized = not groups[name] and _manifest_matches(cdir, sp.layout())
        sp.manifest_sha = (_complete_manifest(cdir) or {}).get(MANIFEST_SHA_KEY)
        plans[name] = sp
    return list(plans.values())


class _Fingerprinter:
    """Episode fingerprints of a split's stages, for any subset of episodes at a time (a first
    extract's background thread goes part by part, so the first parts resolve first):

        hash(stage base; the episode's record fields and file contents; its upstream fingerprints)

    Content hashes are shared by stages reading the same fields and files, and each episode's
    files are hashed once. Call upstream stages before their consumers for the same episodes;
    ``close`` flushes the file-hash memo and saves the fingerprint memo."""

    def __init__(self, project: ProjectConfig, dataset: str, stages: dict[str, Stage], memo: FingerprintMemo | None, hasher: FileHasher):
        self.project, self.dataset, self.stages, self.memo, self.hasher = project, dataset, stages, memo, hasher
        self.root = Path(project.dataset(dataset).root)
        self._content: dict[tuple, dict[str, str]] = {}
        self._bases: dict[str, dict] = {}
        #: stage -> episode id -> fingerprint, for every episode asked so far
        self.efps: dict[str, dict[str, str]] = {n: {} for n in stages}

    def __call__(self, name: str, episodes: list[Episode]) -> dict[str, str]:
        stage = self.stages[name]
        key = (stage.reads_files, stage.skip_file_suffixes, stage.record_keys)
        have = self._content.setdefault(key, {})
        todo = [e for e in episodes if e.episode_id not in have]
        if todo:
            if self.memo is None:
                have.update(episode_fingerprints(todo, self.root, self.hasher, stage.files_read, stage.record_keys))
            else:
                have.update(self.memo.fingerprints(json.dumps(key), todo, self.root, self.hasher, stage.files_read, stage.record_keys))
        if name not in self._bases:
            self._bases[name] = _stage_base(self.project, self.dataset, name, stage)
        # = hash_obj({"stage": base, "episode": content, "upstream": {u: efps[u][id]}}) per episode
        out = stage_fingerprints(self._bases[name], {e.episode_id: have[e.episode_id] for e in episodes},
                                 {u: self.efps[u] for u in stage.consumes})
        self.efps[name].update(out)
        return out

    def close(self) -> None:
        self.hasher.flush()  # one memo transaction: a kill later loses none of these hashes
        if self.memo is not None:
            self.memo.save()


def _plan_fresh(dataset: str, split: str, names: list[str], stages: dict[str, Stage], cdirs: dict[str, Path], episodes: list[Episode],
                part_size: int, backend: str, fingerprinter: _Fingerprinter, ahead: Ahead) -> list[StagePlan]:
    """The plan of a first extract, returned before any input file is hashed.

    Every episode of every stage is todo and no part exists, so the parts (groups, ids from 0,
    state "missing") are what ``_plan_split`` would give whatever the fingerprints. Their
    fingerprints, part fingerprints and upstream locations are filled in by ``ahead.later`` as
    the build asks for each part (``PendingPart.want``), each released as it is done: a part's
    commit waits for its own part only. The parts the build never reaches (other shards', a failed
    stage's) are never hashed; reading their fingerprints after the build raises."""
    groups = _group(names, stages, {n: list(episodes) for n in names}, part_size)
    # plan order: group by group, a group's upstream stages first; the rank a part is asked for by
    order = sorted(((name, k) for name in names for k, _ in groups[name]), key=lambda nk: (nk[1], names.index(nk[0])))
    rank = {key: i for i, key in enumerate(order)}
    plans: dict[str, StagePlan] = {}
    by_group: dict[tuple[str, int], PendingPart] = {}
    demand = _OnDemand()
    for name in names:
        free = free_numbers(set())
        parts: list[PartPlan] = []
        for k, eps in groups[name]:
            by_group[name, k] = PendingPart(Future(), functools.partial(demand.want, rank[name, k]), part_id(next(free)), eps, "", "missing", k)
            parts.append(by_group[name, k])
        plans[name] = StagePlan(dataset, split, name, stages[name], cdirs[name], parts,
                                {u: plans[u].cache_dir for u in stages[name].consumes}, part_size=part_size)
    filled = [0]

    def fill(name: str, k: int) -> None:
        p = by_group[name, k]
        for u in stages[name].consumes:  # its upstream parts' locations first
            if not by_group[u, k].ready.done():
                fill(u, k)
        efps = fingerprinter(name, p.episodes)
        p.episode_fps = efps
        p.fingerprint = part_fingerprint(backend, [(e.episode_id, efps[e.episode_id]) for e in p.episodes])
        p.upstream = _upstream_of(p, stages[name], {u: by_group[u, k].locations() for u in stages[name].consumes})
        p.ready.set_result(None)
        filled[0] += 1

    def resolve() -> None:
        try:
            # the memo is saved as soon as the last part is filled, not at the end of the build
            while filled[0] < len(order) and (i := demand.next()) is not None:
                if not by_group[order[i]].ready.done():
                    fill(*order[i])
            fingerprinter.close()
        except BaseException as e:  # noqa: BLE001 - every reader of a pending part gets it
            for p in by_group.values():
                if not p.ready.done():
                    p.ready.set_exception(e)
            raise
        # parts the build never reached (other shards' parts, a failed stage's) are not hashed: a
        # shard task reads only its own inputs; a rerun hashes the rest when it plans them
        for p in by_group.values():
            if not p.ready.done():
                p.ready.set_exception(RuntimeError(f"part {p.part_id} was not hashed: the build did not reach it"))

    ahead.later(resolve, demand.drain)
    return list(plans.values())


class _OnDemand:
    """The ranks (plan order) of the pending parts the build asked for (``want``), earliest first
    (a heap: R2R-sized splits have ~10K parts), until the build is over (``drain``)."""

    def __init__(self):
        self._cv = threading.Condition()
        self._wanted: list[int] = []
        self._drained = False

    def want(self, rank: int) -> None:
        with self._cv:
            heapq.heappush(self._wanted, rank)
            self._cv.notify()

    def drain(self) -> None:
        with self._cv:
            self._drained = True
            self._cv.notify()

    def next(self) -> int | None:
        """The next rank asked for (maybe a part already done: the caller skips it); None once
        drained and none is left. Waits while nothing is asked for and the build is not over."""
        with self._cv:
            while not self._wanted and not self._drained:
                self._cv.wait()
            return heapq.heappop(self._wanted) if self._wanted else None


def _upstream_of(p: PartPlan, stage: Stage, ups: dict[str, dict[str, Location]]) -> dict[str, dict[str, Location]]:
    return {u: {e.episode_id: ups[u][e.episode_id] for e in p.episodes} for u in stage.consumes}


def _empty(folder: Path) -> bool:
    """``folder`` holds nothing (or is not there): no part, leftover or lease of another run."""
    try:
        with os.scandir(folder) as it:
            return next(it, None) is None
    except FileNotFoundError:
        return True


def _stage_base(project: ProjectConfig, dataset: str, name: str, stage: Stage) -> dict:
    ds = project.dataset(dataset)
    return {
        "spec": stage.spec().to_json(stage.dims(), docs=False),
        "stage": name,
        "code_version": stage.code_version,
        "identity": stage.identity(),
        "source": {"kind": ds.source, "options": ds.options},
    }


def _group(names: list[str], stages: dict[str, Stage], todo: dict[str, list[Episode]], part_size: int) -> dict[str, list[tuple[int, list[Episode]]]]:
    """Per stage: (group number, its todo episodes in that group), see the module docstring."""
    root = {n: n for n in names}

    def find(n: str) -> str:
        while root[n] != n:
            n = root[n]
        return n

    for n in names:
        for u in stages[n].consumes:
            if u in root:
                root[find(n)] = find(u)
    out: dict[str, list[tuple[int, list[Episode]]]] = {n: [] for n in names}
    k = 0
    for chain_root in dict.fromkeys(find(n) for n in names):
        members = [n for n in names if find(n) == chain_root]
        ids = sorted({e.episode_id for m in members for e in todo[m]})
        group_of = {eid: k + i // part_size for i, eid in enumerate(ids)}
        for m in members:
            buckets: dict[int, list[Episode]] = {}
            for e in todo[m]:
                buckets.setdefault(group_of[e.episode_id], []).append(e)
            out[m] = sorted(buckets.items())
        k += -(-len(ids) // part_size)
    return out


def _new_part(cdir: Path, base: _Base, free: Iterator[int], group: int, eps: list[Episode], fps: dict[str, str], backend: str) -> PartPlan:
    """The part of ``eps``: named after the listed part of the same content if one was lost
    (a repair restores the cache byte for byte), else after the next free number."""
    efp = {e.episode_id: fps[e.episode_id] for e in eps}
    fp = part_fingerprint(backend, [(e.episode_id, efp[e.episode_id]) for e in eps])
    pid = base.names.get(fp) or part_id(next(free))
    meta = read_part_meta(cdir / PARTS / pid)
    # committed by an earlier (killed or shard) run of this same plan, or a leftover of another
    state = "missing" if meta is None else ("up-to-date" if meta["fingerprint"] == fp and meta.get("backend") == backend else "stale")
    return PartPlan(pid, eps, fp, state, group, efp)


def _manifest_matches(cdir: Path, layout: list[tuple[str, str]]) -> bool:
    """The complete manifest's index already is ``layout`` (nothing to finalise but sweeping)."""
    import pyarrow.parquet as pq

    from navcache.cache_specs.layout import read_json

    try:
        if read_json(cdir / MANIFEST).get("format") != MANIFEST_FORMAT:
            return False
        t = pq.read_table(cdir / INDEX, columns=["episode_id", "part"]).to_pydict()
    except (OSError, ValueError, AttributeError):
        return False
    return list(zip(t["episode_id"], t["part"])) == layout


def _complete_manifest(cdir: Path) -> dict | None:
    from navcache.cache_specs.layout import read_json

    try:
        m = read_json(cdir / MANIFEST)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("format") == MANIFEST_FORMAT and m.get("complete") else None


def finalised_since(sp: StagePlan) -> dict | None:
    """The manifest a concurrent run finalised since ``sp`` was planned, when it holds exactly the
    plan's episodes, each with the plan's fingerprint (its part ids may differ: that run compacted
    and swept the parts this plan names, so finalising this plan again would fail); else None."""
    m = _complete_manifest(sp.cache_dir)
    if m is None or m.get(MANIFEST_SHA_KEY) == sp.manifest_sha:
        return None
    live = _live_rows(sp.cache_dir, m)
    want = {eid: fp for p in sp.parts for eid, fp in p.episode_fps.items()}
    if set(live) != set(want):
        return None
    held: dict[str, dict[str, str | None]] = {}
    for eid, pid in live.items():
        if pid not in held:
            meta = read_part_meta(sp.cache_dir / PARTS / pid)
            held[pid] = {} if meta is None else {e["episode_id"]: e.get("fingerprint") for e in meta["episodes"]}
        if held[pid].get(eid) != want[eid]:
            return None
    return m
