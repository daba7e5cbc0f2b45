"""Concurrent `navcache extract` runs in one folder share the work (pipeline/leases.py): the caches
equal a single run's, no part is built twice, a frozen or killed run's claims are taken over, and
the demo world is generated once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from navcache.cache_specs.layout import LEASE_PREFIX, PARTS
from navcache.cache_specs.verify import verify_cache
from navcache.pipeline.config import load_config
from navcache.pipeline.leases import Lease, Owner, Watch, _machine, claim, lease_path
from navcache.pipeline.runner import ExtractOptions, extract
from tests.helpers import REPO, cache_checksums, make_navila, write_project

STAGES = ("poses", "frame_features")
TIMEOUT_S = 1.5

# each process imports the heavy modules, then waits at a gate file, so the runs overlap for real
GATED = f"""
import pathlib, runpy, sys, time
import navcache.pipeline.commands, navcache.pipeline.runner, torch, transformers
gate = pathlib.Path(sys.argv[1])
while not gate.exists():
    time.sleep(0.005)
sys.argv = ["navcache", *sys.argv[2:]]
runpy.run_path({str(REPO / "cli.py")!r}, run_name="__main__")
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_navila(tmp_path_factory.mktemp("nav") / "data", n_episodes=6)  # 12 records: 6 parts of 2 per stage


def project_file(d: Path, dataset: Path, model: Path) -> Path:
    cfg = write_project(d, dataset, model, part_size=2)
    data = yaml.safe_load(cfg.read_text())
    data["run"] = {"lease_timeout_s": TIMEOUT_S}
    cfg.write_text(yaml.safe_dump(data))
    return cfg


@pytest.fixture(scope="module")
def reference(tmp_path_factory, dataset, tiny_model):
    d = tmp_path_factory.mktemp("ref")
    s = extract(load_config(project_file(d, dataset, tiny_model)), ExtractOptions("train"))
    assert not s.errors
    return {st: cache_checksums(d / "cache/nav/train" / st) for st in STAGES}, {x.stage: x.parts_built for x in s.stages}


def start(cwd: Path, cfg: Path, gate: Path, n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", GATED, str(gate), "extract", "--split", "train", "-c", str(cfg), "--json"], cwd=cwd,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True) for _ in range(n)]


def assert_identical(root: Path, reference: dict) -> None:
    for st in STAGES:
        cache = root / "cache/nav/train" / st
        assert cache_checksums(cache) == reference[st]
        assert verify_cache(cache) == []
        assert not list((cache / PARTS).glob(LEASE_PREFIX + "*")), "finalising leaves no lease behind"


@pytest.mark.parametrize("n", [2, 3])
def test_concurrent_runs_share_the_parts(tmp_path, dataset, tiny_model, reference, n):
    cfg = project_file(tmp_path, dataset, tiny_model)
    gate = tmp_path / "go"
    procs = start(tmp_path, cfg, gate, n)
    gate.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    summaries = [json.loads(out) for out, _ in outs]
    checksums, built = reference
    for st in ("poses", "frame-features"):
        per_run = [sum(s["parts_built"] for s in summ["stages"] if s["stage"] == st) for summ in summaries]
        assert sum(per_run) == built[st], f"{st}: parts built per run {per_run}, a single run builds {built[st]}"
    shared = [sum(s["parts_built"] for s in summ["stages"]) for summ in summaries]
    assert sum(b > 0 for b in shared) >= 2, f"the runs did not share the work: {shared}"
    assert all(all(s["finalized"] for s in summ["stages"]) for summ in summaries)
    assert_identical(tmp_path, checksums)


def lease_owners(root: Path) -> dict[int, Path]:
    out = {}
    for f in root.glob(f"cache/nav/train/*/{PARTS}/{LEASE_PREFIX}part-*"):
        try:
            out[json.loads(f.read_bytes())["pid"]] = f
        except (OSError, ValueError, KeyError):
            pass
    return out


def test_frozen_and_killed_runs_claims_are_taken_over(tmp_path, dataset, tiny_model, reference):
    """Run A is frozen (SIGSTOP: alive, no heartbeat: only the timeout frees its claim), run C is
    SIGKILLed (a dead pid on this machine: freed at once); run B finishes with the same cache."""
    cfg = project_file(tmp_path, dataset, tiny_model)
    gate = tmp_path / "go"
    a, b, c = start(tmp_path, cfg, gate, 3)
    gate.touch()
    stopped = killed = False
    deadline = time.monotonic() + 120
    while not (stopped and killed) and b.poll() is None and time.monotonic() < deadline:
        owners = lease_owners(tmp_path)
        if not stopped and a.pid in owners:
            os.killpg(a.pid, signal.SIGSTOP)
            stopped = True
        if not killed and c.pid in owners:
            os.killpg(c.pid, signal.SIGKILL)
            killed = True
        time.sleep(0.002)
    try:
        out, err = b.communicate(timeout=300)
    finally:
        for p in (a, c):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert stopped and killed, "A and C never held a claim while B ran"
    assert b.returncode == 0, err
    assert all(s["finalized"] for s in json.loads(out)["stages"])
    assert_identical(tmp_path, reference[0])


def foreign_lease(path: Path, beat: int = 0) -> bytes:
    """A lease as a run on another node writes it."""
    owner = Owner("node-7", "node-7|boot|pid:[1]", 4242, "99", "f" * 16)
    path.write_bytes(owner.record(beat))
    return path.read_bytes()


def test_a_foreign_lease_is_taken_over_only_after_the_timeout_without_heartbeat(tmp_path):
    path = lease_path(tmp_path, "part-00000")
    foreign_lease(path)
    watch, beats = Watch(0.4), 0
    while (lease := claim(path, watch, 0.4)) is None:
        if beats < 5:  # a live owner on another node: its heartbeat keeps the lease
            beats += 1
            foreign_lease(path, beats)
            t_beat = time.monotonic()
        time.sleep(0.02)
    try:
        assert time.monotonic() - t_beat >= 0.4, "taken over before the timeout passed without a heartbeat"
        assert json.loads(path.read_bytes())["token"] == lease.owner.token
    finally:
        lease.release()
    assert not path.exists()


def test_a_live_lease_is_never_taken_and_a_dead_local_owner_at_once(tmp_path):
    path = lease_path(tmp_path, "part-00001")
    holder = Lease(path, timeout_s=0.3)
    assert holder.acquire()
    watch = Watch(0.3)
    try:
        for _ in range(40):  # over 4 timeouts: the heartbeat thread keeps it alive
            assert claim(path, watch, 0.3) is None
            time.sleep(0.03)
        assert not holder.lost
    finally:
        holder.release()
    # a process of this machine that has exited: its lease is stale at once
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_bytes(Owner("h", _machine(), int(dead.stdout), "1", "e" * 16).record(0))
    lease = claim(path, Watch(3600), 3600)
    assert lease is not None
    lease.release()


DEMO = """
import pathlib, sys, time
import torch, transformers
from navcache.pipeline.project import ensure_demo
gate = pathlib.Path(sys.argv[1])
while not gate.exists():
    time.sleep(0.005)
ensure_demo(pathlib.Path(sys.argv[2]), scale=0.02)
"""


def test_concurrent_runs_generate_the_demo_world_once(tmp_path):
    gate, demo = tmp_path / "go", tmp_path / "navcache_demo"
    procs = [subprocess.Popen([sys.executable, "-c", DEMO, str(gate), str(demo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    gate.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    said = "".join(o for o, _ in outs)
    assert said.count("generating the demo world") == 1, said
    assert json.loads((demo / "demo_info.json").read_text())["scale"] == 0.02
    assert sorted(x.name for x in tmp_path.iterdir()) == ["go", "navcache_demo"], "no lease or temporary left"
