"""heads/sim_heads under a real ``torchrun --nproc-per-node 2`` (gloo, CPU) on the demo rover caches.

What ``heads.train_loop.run_loop`` guarantees under DDP, and so what is asserted here:
  * every rank shuffles with the same per-epoch generator and takes a disjoint, equal shard
    ``perm[rank * (N // world) : (rank + 1) * (N // world)]``; ``batch_size`` is PER RANK;
  * DDP averages gradients over ranks, so the ranks hold identical trainable weights after every step;
  * running stats are averaged over ranks; only rank 0 writes files.
Step-by-step equivalence with one process therefore holds only when each rank's step covers its
whole shard (full batch: per-rank batch >= N // world, one step per epoch), N % world == 0 and
there is no dropout. The per-sample weights (inverse class frequency on the demo) are on: the
SIM loss divides by the weight sum all-reduced over ranks, so the DDP step is the gradient of the
GLOBAL weighted mean, as in one process. Then the DDP run and a single
process with batch N take the same (full-batch) step every epoch, equal up to float summation
order. With mini-batches the sample-to-step assignment differs from any single-process run, so
nothing closer than "it trains" would be guaranteed there.

Both ranks create the frozen random-init GPT-2 (``llm: null``) themselves: ``make_random_gpt2``
builds it in a private folder and renames it into place.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.slow  # real torchrun / large demo: seconds to a minute each

REPO = Path(__file__).resolve().parents[2]
WORLD = 2
EPOCHS = 3

DDP_SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    import torch
    torch.set_num_threads(1)
    import torch.distributed as dist

    import navcache.heads.sim_heads.train as sim_train
    from navcache.heads.sim_heads import load_config, train_sim_heads

    cfg_path, marks = sys.argv[1], Path(sys.argv[2])
    seen = {}
    build_task = sim_train.build_task

    def spy(cfg):  # keep a handle on the task train_sim_heads builds, and the frozen LLM as loaded
        task, info = build_task(cfg)
        seen["task"] = task
        seen["llm_before"] = {n: p.detach().clone() for n, p in task.model.llm.named_parameters()}
        return task, info

    sim_train.build_task = spy
    res = train_sim_heads(load_config(cfg_path))
    rank, world = dist.get_rank(), dist.get_world_size()
    model = seen["task"].model
    llm = model.llm
    report = {
        "rank": rank,
        "world": world,
        "n_llm_params": len(seen["llm_before"]),
        "llm_unchanged": all(torch.equal(p.detach(), seen["llm_before"][n]) for n, p in llm.named_parameters()),
        "llm_no_grad": all(not p.requires_grad and p.grad is None for p in llm.parameters()),
        "llm_eval_mode": not llm.training,
        "trainable_have_grad": all(p.grad is not None for p in model.parameters() if p.requires_grad),
        "last_val": res["last"]["val"],
    }
    torch.save({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}, marks / f"rank{rank}.pt")
    (marks / f"rank{rank}.json").write_text(json.dumps(report))  # the test's own markers
    dist.barrier()
    dist.destroy_process_group()
    """
)


def _torchrun_available() -> str | None:
    try:
        import torch.distributed.run  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the torch build
        return f"torch.distributed.run cannot be imported: {e}"
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        return "torch.distributed with the gloo backend is not available in this torch build"
    return None


@pytest.fixture(scope="module")
def rover_caches(demo_cache_root):
    return demo_cache_root  # built once per test session (tests/conftest.py)


def _config(caches: Path, out: Path, batch_size: int, path: Path) -> Path:
    """A trainer config YAML: full-batch settings under which DDP and one process are equivalent."""
    cfg = {
        "cache_root": str(caches),
        "dataset": "demo_rover",
        "llm": None,  # tiny seeded random-init GPT-2 under out_dir/frozen_llm
        "dropout": 0.0,
        "use_sample_weights": True,
        "out_dir": str(out),
        "loop": {"epochs": EPOCHS, "batch_size": batch_size, "lr": 3.0e-3, "seed": 0, "device": "cpu", "save_every_epoch": True},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def runs(rover_caches, tmp_path_factory):
    """One torchrun --nproc-per-node 2 run and the single-process run it must match."""
    why = _torchrun_available()
    if why:
        pytest.skip(why)
    from navcache.heads.sim_heads import load_config, train_sim_heads
    from navcache.heads.sim_heads.data import load_split

    tmp = tmp_path_factory.mktemp("sim_ddp")
    n_train = load_split(rover_caches, "demo_rover", "train")[1]["n"]
    assert n_train % WORLD == 0  # no sample dropped by the per-rank shard
    per_rank = n_train // WORLD

    ddp_out, marks = tmp / "ddp", tmp / "marks"
    marks.mkdir()
    ddp_cfg = _config(rover_caches, ddp_out, per_rank, tmp / "ddp.yaml")
    script = tmp / "ddp_sim_heads.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD), str(script), str(ddp_cfg), str(marks)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    single_out = tmp / "single"
    single_cfg = _config(rover_caches, single_out, n_train, tmp / "single.yaml")
    single = train_sim_heads(load_config(single_cfg))
    return {"proc": p, "out": ddp_out, "marks": marks, "single_out": single_out, "single": single, "n_train": n_train, "per_rank": per_rank}


def test_torchrun_exits_0_and_both_ranks_ran(runs):
    p = runs["proc"]
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    reports = {m.name: json.loads(m.read_text()) for m in runs["marks"].glob("rank*.json")}
    assert sorted(reports) == ["rank0.json", "rank1.json"]
    assert {r["world"] for r in reports.values()} == {WORLD}
    assert reports["rank0.json"]["last_val"] == reports["rank1.json"]["last_val"]  # same model, same full-split evaluation


def test_rank0_outputs(runs):
    out = runs["out"]
    assert runs["proc"].returncode == 0, runs["proc"].stderr[-3000:]
    for name in ("last.pt", "best.pt", *(f"epoch_{e:03d}.pt" for e in range(1, EPOCHS + 1))):
        ckpt = torch.load(out / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert ckpt["metadata"]["head"] == "sim-heads"
    assert not list((out / "checkpoints").glob(".*tmp*"))
    last = torch.load(out / "checkpoints/last.pt", weights_only=True)
    best = torch.load(out / "checkpoints/best.pt", weights_only=True)
    assert last["epoch"] == EPOCHS and 1 <= best["epoch"] <= EPOCHS
    for name in ("train_metrics.jsonl", "val_metrics.jsonl"):
        assert [r["epoch"] for r in _lines(out / "metrics" / name)] == list(range(1, EPOCHS + 1)), name  # one line per epoch, not per rank
    labels = json.loads((out / "export/labels.json").read_text())
    assert labels["risk"]["3"] == "high" and len(labels["action"]) == 6 and len(labels["reason"]) == 4
    log = (out / "logs/stdout.log").read_text()
    assert log.count(f"epoch {EPOCHS}/{EPOCHS}") == 1 and f"x{WORLD}" in log  # rank 0 logs, once
    resolved = yaml.safe_load((out / "config_resolved.yaml").read_text())
    assert resolved["loop"]["world_size"] == WORLD and resolved["loop"]["batch_size"] == runs["per_rank"]


def test_frozen_llm_unchanged_and_checkpoint_holds_trainable_only(runs):
    from navcache.heads.sim_heads.model import SimV0Model, load_frozen_llm

    assert runs["proc"].returncode == 0, runs["proc"].stderr[-3000:]
    for m in sorted(runs["marks"].glob("rank*.json")):
        r = json.loads(m.read_text())
        assert r["n_llm_params"] > 0
        assert r["llm_unchanged"] and r["llm_no_grad"] and r["llm_eval_mode"], (m.name, r)
        assert r["trainable_have_grad"], m.name
    last = torch.load(runs["out"] / "checkpoints/last.pt", weights_only=True)
    md = last["metadata"]
    assert md["llm"]["random_init"] is True
    model = SimV0Model(load_frozen_llm(runs["out"] / "frozen_llm"), md["dv"], md["F"], md["K"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(last["model"]) == trainable and not any(k.startswith("llm.") for k in last["model"])
    # the checkpoint is exactly rank 0's (= rank 1's) trainable weights after the last epoch
    w0 = torch.load(runs["marks"] / "rank0.pt", weights_only=True)
    w1 = torch.load(runs["marks"] / "rank1.pt", weights_only=True)
    assert set(w0) == set(w1) == trainable
    for k in trainable:
        assert torch.equal(w0[k], w1[k]), k  # DDP keeps the ranks' weights identical
        assert torch.equal(last["model"][k], w0[k]), k


def test_ddp_matches_single_process_full_batch(runs):
    """Full batch, plain mean, no dropout: each epoch is the same single step in both runs."""
    assert runs["proc"].returncode == 0, runs["proc"].stderr[-3000:]
    ddp_tr = _lines(runs["out"] / "metrics/train_metrics.jsonl")
    one_tr = _lines(runs["single_out"] / "metrics/train_metrics.jsonl")
    # epoch 1's running loss is the loss of the (identical) initial weights on the whole train split:
    # mean over ranks of each shard's mean == the mean over all N samples
    for k in ("running_loss", "running_loss_risk", "running_loss_reason", "running_loss_action", "running_grad_norm"):
        assert ddp_tr[0][k] == pytest.approx(one_tr[0][k], rel=1e-5, abs=1e-6), k
    # trainable weights after the first (identical, full-batch) step
    a = torch.load(runs["out"] / "checkpoints/epoch_001.pt", weights_only=True)["model"]
    b = torch.load(runs["single_out"] / "checkpoints/epoch_001.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    # and the evaluations of every epoch (same weights up to float order => same metrics)
    ddp_val = _lines(runs["out"] / "metrics/val_metrics.jsonl")
    one_val = _lines(runs["single_out"] / "metrics/val_metrics.jsonl")
    for d, s in zip(ddp_val, one_val, strict=True):
        assert d["n"] == s["n"]
        assert d["loss"] == pytest.approx(s["loss"], rel=1e-4), d["epoch"]
        for key in ("risk_accuracy", "reason_accuracy", "action_accuracy"):  # an exact logit tie may flip one clip at most
            assert d[key] == pytest.approx(s[key], abs=1.01 / d["n"]), (d["epoch"], key)
