"""Against a real SLURM (``.ci/slurm-up.sh`` starts a single-node one in CI): the README's array
recipe, a task cancelled mid-run and resubmitted, and ``navcache submit`` + ``status``.

Each test copies a small demo world (scale 0.5) into its own folder and compares every cache it ends
with against a plain local run over the same world: part checksums and index rows identical."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import cache_checksums

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sbatch") is None,
                       reason="no sbatch on PATH: SLURM tests need a cluster (CI starts one with .ci/slurm-up.sh, as root)"),
]

SCALE = 0.5


def _readme_recipe() -> list[str]:
    """The README's ``sbatch --array=... --wrap '...'`` line, as a user would type it."""
    import shlex

    from tests.helpers import REPO

    (line,) = [x for x in (REPO / "README.md").read_text().splitlines() if x.startswith("sbatch --array=")]
    return shlex.split(line)


RECIPE = _readme_recipe()
TIMEOUT = 240.0


def _env() -> dict:
    """This interpreter's ``navcache`` first on PATH; sbatch hands the environment to the jobs."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def _run(*args: str, cwd: Path) -> str:
    p = subprocess.run(list(args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, f"{' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def _sbatch(cwd: Path, jobs: list[str], *args: str) -> str:
    job = _run("sbatch", "--parsable", *args, cwd=cwd).strip().split(";")[0]
    jobs.append(job)
    return job


def _json_docs(text: str) -> list:
    """The JSON documents printed one after another (status prints one per split, then the arrays)."""
    dec, docs, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        doc, i = dec.raw_decode(text, i)
        docs.append(doc)
    return docs


def _wait(job: str, cwd: Path) -> None:
    from navcache.pipeline.executors.slurm_submit import wait_for

    try:
        wait_for([job], TIMEOUT, poll=0.5)
    except TimeoutError:
        subprocess.run(["scancel", job])
        raise AssertionError(f"job {job} still queued after {TIMEOUT} s\n{_logs(cwd)}") from None


def _logs(cwd: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(cwd.rglob("*.out")))


def _all_checksums(cwd: Path) -> dict:
    from navcache.cache_specs.reader import iter_caches

    root = cwd / "navcache_cache"
    return {str(d.relative_to(root)): cache_checksums(d) for d in iter_caches(root)}


def _finalise(cwd: Path) -> dict:
    """The README's plain run after the array: it must find every part built."""
    summary = json.loads(_run("navcache", "extract", "--split", "train", "--json", cwd=cwd))
    assert not summary["errors"], summary["errors"]
    built = {f"{s['dataset']}/{s['stage']}": s["parts_built"] for s in summary["stages"]}
    assert set(built.values()) == {0}, f"the array left parts for the finalising run: {built}\n{_logs(cwd)}"
    return summary


def _no_leftovers(cwd: Path) -> None:
    """No temporary part folder survives finalisation (a killed task's orphan is swept)."""
    stray = [p for p in (cwd / "navcache_cache").rglob("parts/*") if p.name.startswith(".")]
    assert not stray, stray


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A folder holding the small demo world (``navcache demo-data --scale 0.5``) and its encoder."""
    from navcache.pipeline.commands import demo_data_cmd

    base = tmp_path_factory.mktemp("slurm-world")
    assert demo_data_cmd(base / "navcache_demo", SCALE, 0) == 0
    return base


@pytest.fixture(scope="module")
def local_sums(world, tmp_path_factory) -> dict:
    """Checksums of a plain local run (no SLURM) over the same world."""
    cwd = tmp_path_factory.mktemp("slurm-local")
    shutil.copytree(world / "navcache_demo", cwd / "navcache_demo")
    _run("navcache", "extract", "--split", "train", cwd=cwd)
    sums = _all_checksums(cwd)
    assert set(sums) == _demo_train_caches(cwd), sorted(sums)  # every demo dataset's train caches
    return sums


def _demo_train_caches(cwd: Path) -> set[str]:
    """"<dataset>/train/<spec>" of every stage the demo project runs (a stage's spec is its name with "_")."""
    from navcache.pipeline.project import demo_config_dict

    cfg = demo_config_dict(cwd / "navcache_demo", cwd / "navcache_cache")
    return {f"{d}/train/{s.replace('-', '_')}" for d, v in cfg["datasets"].items() for s in v["stages"]}


@pytest.fixture
def job_dir(world, tmp_path) -> Path:
    """A fresh copy of the world."""
    cwd = tmp_path / "job"
    shutil.copytree(world / "navcache_demo", cwd / "navcache_demo")
    return cwd


@pytest.fixture
def jobs():
    """The ids a test submits: whatever it leaves queued (a failed test) is cancelled afterwards."""
    ids: list[str] = []
    yield ids
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


def _shard_parts(cwd: Path, shard: int, n: int) -> list[Path]:
    """part.json paths of the new parts shard ``shard`` of ``n`` owns (the plan all tasks share)."""
    from navcache.pipeline.fingerprint import FileHasher
    from navcache.pipeline.project import resolve_project
    from navcache.pipeline.runner import ExtractOptions, plan_all
    from navcache.pipeline.summary import RunSummary

    project = resolve_project(cwd=cwd, say=lambda m: None)
    plans = plan_all(project, ExtractOptions("train", dry_run=True), RunSummary(dry_run=True), FileHasher())
    return [sp.cache_dir / "parts" / p.part_id / "part.json" for sp in plans for p in sp.parts if p.group % n == shard]


def test_readme_array_recipe_with_a_task_cancelled_and_resubmitted_matches_a_local_run(job_dir, jobs, local_sums):
    """The README's array line as written; its task 1 is scancelled mid-run and resubmitted alone
    (``--array=1``, as the README says), then the plain finalising run: caches equal a local run."""
    from navcache.pipeline.executors.slurm_submit import queue_states

    mine = _shard_parts(job_dir, 1, 4)
    assert len(mine) >= 3, mine  # several parts: there is a "mid-run" between the first and the last
    assert RECIPE[1] == "--array=0-3", RECIPE  # shard 1 of 4 below
    job = _sbatch(job_dir, jobs, *RECIPE[1:])
    deadline = time.monotonic() + TIMEOUT
    while not any(p.exists() for p in mine):  # task 1 has committed its first part
        assert 1 in queue_states(job), f"task 1 left the queue before committing a part\n{_logs(job_dir)}"
        assert time.monotonic() < deadline, _logs(job_dir)
        time.sleep(0.02)
    _run("scancel", f"{job}_1", cwd=job_dir)
    _wait(job, job_dir)
    done = [p for p in mine if p.exists()]
    assert 0 < len(done) < len(mine), f"task 1 was not cancelled mid-run: {len(done)}/{len(mine)} parts"

    again = _sbatch(job_dir, jobs, "--array=1", *RECIPE[2:])  # the cancelled task alone, as written
    _wait(again, job_dir)
    assert all(p.exists() for p in mine), "the resubmitted task left parts unbuilt"
    _finalise(job_dir)
    assert _all_checksums(job_dir) == local_sums
    _no_leftovers(job_dir)


def test_submit_and_status(job_dir, jobs, local_sums):
    # one dataset keeps it short: the array and finalising job are the same whatever they build
    n_parts = len([p for p in _shard_parts(job_dir, 0, 1) if "demo_rover" in str(p)])
    out = json.loads(_run("navcache", "submit", "extract", "--split", "train", "--array", "2", "--time", "10",
                          "--mem", "2G", "--cpus-per-task", "1", "--dataset", "demo_rover", "--json", cwd=job_dir))
    jobs += [out["array_job"], out["finalize_job"]]
    folder = Path(out["folder"])
    assert folder.is_relative_to(job_dir / "navcache_cache" / ".navcache" / "slurm")
    script = (folder / "array.sbatch").read_text()
    for line in ("#SBATCH --array=0-1", "#SBATCH --time=10", "#SBATCH --mem=2G", "#SBATCH --cpus-per-task=1", "--shard $SLURM_ARRAY_TASK_ID/2"):
        assert line in script, (line, script)

    status = _json_docs(_run("navcache", "status", "--split", "train", "--json", cwd=job_dir))[-1]
    (arr,) = status["slurm"]  # the array is queued or running: one row per task
    assert arr["array_job"] == out["array_job"] and [t["task"] for t in arr["tasks"]] == [0, 1]
    assert sum(t["parts"] for t in arr["tasks"]) == n_parts and all(0 <= t["built"] <= t["parts"] for t in arr["tasks"])
    assert all(t["state"] in ("pending", "running", "completing", "exit 0") for t in arr["tasks"]), arr["tasks"]

    _wait(out["finalize_job"], job_dir)
    assert [(folder / f"task-{i}.rc").read_text().strip() for i in range(2)] == ["0"] * 2, _logs(folder)
    assert "navcache summary" in (folder / "finalize.out").read_text(), _logs(folder)
    assert _all_checksums(job_dir) == {k: v for k, v in local_sums.items() if k.startswith("demo_rover/")}
    assert all("slurm" not in d for d in _json_docs(_run("navcache", "status", "--split", "train", "--json", cwd=job_dir)))  # nothing queued now


def test_executor_slurm_worker_cancelled_mid_run_loses_nothing(job_dir, local_sums):
    """``--executor slurm``: dask-jobqueue submits 2 workers as SLURM jobs (seen RUNNING in squeue,
    their logs in the cache root); one is ``scancel``-ed once a part is committed and others are still
    to build; dask reruns its tasks on the other worker, the run completes, and the caches equal a
    local run's (a rerun is the fallback should the run itself not recover)."""
    import dataclasses

    from navcache.pipeline.executors.slurm_cluster import SlurmClusterConfig
    from navcache.pipeline.executors.slurm_submit import run_slurm
    from navcache.pipeline.project import resolve_project
    from navcache.pipeline.runner import ExtractOptions, Reporter, extract

    name = f"navcache-test-cancel-{os.getpid()}"
    cancelled: list[str] = []
    done = [0]

    class CancelOne(Reporter):  # after the first committed part: scancel one running worker job
        def stage_start(self, sp, episodes):
            def after_part(e, f):
                done[0] += 1
                if cancelled:
                    return
                queued = dict(ln.split() for ln in run_slurm("squeue", "-h", "--name", name, "-o", "%i %T").splitlines())
                running = [j for j, state in queued.items() if state == "RUNNING"]
                if running and len(queued) == 2:  # cancel a running one: the other (running or soon) finishes
                    run_slurm("scancel", running[0])
                    cancelled.append((running[0], done[0]))
            return after_part

    opts = ExtractOptions("train", datasets=("demo_rover",), executor="slurm", workers=2)
    n_parts = len([p for p in _shard_parts(job_dir, 0, 1) if "demo_rover" in str(p)])
    assert n_parts >= 3, n_parts  # parts remain to build after the first: the cancel is mid-run
    project = resolve_project(cwd=job_dir, say=lambda m: None)
    project = dataclasses.replace(project, slurm=SlurmClusterConfig(cores=1, memory="2GB", walltime="00:10:00", job_name=name))
    try:
        summary = extract(project, opts, CancelOne())
        if summary.errors:  # dask-jobqueue could not recover: a rerun must finish the work
            summary = extract(project, opts)
    finally:
        subprocess.run(["scancel", "--name", name], capture_output=True)
    assert not summary.errors, summary.errors
    ((job, parts_then),) = cancelled
    assert 0 < parts_then < n_parts, (cancelled, n_parts)  # cancelled mid-run
    assert _all_checksums(job_dir) == {k: v for k, v in local_sums.items() if k.startswith("demo_rover/")}
    assert list((job_dir / "navcache_cache" / ".navcache" / "slurm" / "workers").glob("*.out"))  # the worker jobs' logs
    _no_leftovers(job_dir)
