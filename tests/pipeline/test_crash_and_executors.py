"""Crash safety (SIGKILL at random moments), the dask executor with a killed worker, SLURM-style shards."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from navcache.cache_specs.layout import PARTS
from navcache.cache_specs.verify import verify_cache
from navcache.pipeline.config import load_config
from navcache.pipeline.runner import ExtractOptions, extract
from tests.helpers import REPO, cache_checksums, make_navila, write_project

STAGES = ("poses", "frame_features")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_navila(tmp_path_factory.mktemp("nav") / "data", n_episodes=24)  # 48 records, 24 parts of 2


@pytest.fixture(scope="module")
def reference(tmp_path_factory, dataset, tiny_model):
    d = tmp_path_factory.mktemp("ref")
    cfg = write_project(d, dataset, tiny_model, part_size=2)
    s = extract(load_config(cfg), ExtractOptions("train"))
    assert not s.errors
    return {st: cache_checksums(d / "cache/nav/train" / st) for st in STAGES}


def assert_identical(root: Path, reference: dict) -> None:
    for st in STAGES:
        cache = root / "cache/nav/train" / st
        names = sorted(p.name for p in (cache / PARTS).iterdir())
        assert names == sorted(k for k in reference[st] if k != "index"), f"{st}: leftover/missing parts {names}"
        assert cache_checksums(cache) == reference[st]
        assert verify_cache(cache) == []


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_is_identical(tmp_path, dataset, tiny_model, reference):
    cfg = write_project(tmp_path, dataset, tiny_model, part_size=2)
    rng = random.Random(1234)
    ff = tmp_path / "cache/nav/train/frame_features"

    def committed() -> int:
        return len([p for p in (ff / PARTS).glob("part-*")]) if (ff / PARTS).is_dir() else 0

    kills = 0
    for attempt in range(5):
        p = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "extract", "--split", "train", "-c", str(cfg), "--json"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        # kill at a random moment inside the build: a few parts after the current count, plus jitter
        target = committed() + rng.randint(1, 4)
        while p.poll() is None and committed() < target:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.05))
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            kills += 1
        p.wait()
        if p.returncode == -signal.SIGKILL:
            assert not (ff / "manifest.json").exists(), "a killed build left a cache that claims to be complete"
    assert kills >= 3, f"only {kills} kills landed mid-build"
    r = subprocess.run([sys.executable, str(REPO / "cli.py"), "extract", "--split", "train", "-c", str(cfg)], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert_identical(tmp_path, reference)


def test_dask_local_cluster_with_a_killed_worker(tmp_path, dataset, tiny_model, reference):
    from dask.distributed import Client, LocalCluster

    from navcache.pipeline.executors import dask_exec
    from navcache.pipeline.plan import plan_split

    project = load_config(write_project(tmp_path, dataset, tiny_model, part_size=2))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        for sp in plan_split(project, "nav", "train"):
            killed = []

            def kill_one_worker(e, f):
                # after the first part lands, SIGKILL a worker that is busy: its part must be redone
                if not killed and sp.stage_name == "frame-features":
                    pids = client.run(os.getpid)
                    victim = sorted(pids.values())[0]
                    os.kill(victim, signal.SIGKILL)
                    killed.append(victim)

            metas = dask_exec.build_parts_dask(project, sp, sp.todo, 2, None, kill_one_worker, client=client)
            assert sorted(m["part"] for m in metas) == [p.part_id for p in sp.parts]
            from navcache.cache_specs.manifest import finalize_cache

            finalize_cache(sp.cache_dir, sp.expected(), {"stage": sp.stage_name})
        assert killed, "no worker was killed"
    # a plain rerun finds everything up to date and cleans any temporary folder the dead worker left
    s = extract(project, ExtractOptions("train"))
    assert all(st.parts_built == 0 for st in s.stages)
    assert_identical(tmp_path, reference)


def test_slurm_style_shards_then_plain_run(tmp_path, dataset, tiny_model, reference):
    project = load_config(write_project(tmp_path, dataset, tiny_model, part_size=2))
    for i in range(3):
        s = extract(project, ExtractOptions("train", shard=(i, 3)))
        assert not s.errors
        assert not (tmp_path / "cache/nav/train/poses/manifest.json").exists()
    s = extract(project, ExtractOptions("train"))
    assert [st.parts_built for st in s.stages] == [0, 0] and all(st.finalized for st in s.stages)
    assert_identical(tmp_path, reference)


@pytest.mark.slow
def test_dask_cli_end_to_end(tmp_path, dataset, tiny_model, reference):
    cfg = write_project(tmp_path, dataset, tiny_model, part_size=2)
    r = subprocess.run([sys.executable, str(REPO / "cli.py"), "extract", "-c", str(cfg), "--executor", "dask", "--workers", "2", "--json"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_identical(tmp_path, reference)


def test_dask_joins_an_existing_scheduler(tmp_path, dataset, tiny_model, reference):
    from dask.distributed import LocalCluster

    project = load_config(write_project(tmp_path, dataset, tiny_model, part_size=2))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        s = extract(project, ExtractOptions("train", executor="dask", scheduler=cluster.scheduler_address))
    assert not s.errors and all(st.finalized for st in s.stages)
    assert_identical(tmp_path, reference)
