"""heads/train_loop.py: seeding, resume, weights_only checkpoints, config validation, torchrun DDP."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heads.train_loop import LoopConfig, Task, load_trainable, run_loop, seed_everything

REPO = Path(__file__).resolve().parents[1]


class ToyTask:
    """3-class classification of 8-d points by a linear rule; a dropout MLP plus one frozen tensor."""

    def __init__(self, seed: int = 0, n_train: int = 96, n_val: int = 40):
        g = torch.Generator().manual_seed(1234)  # data fixed, independent of the training seed
        w = torch.randn(8, 3, generator=g)
        x = torch.randn(n_train + n_val, 8, generator=g)
        y = (x @ w).argmax(-1)
        self.train_arrays = {"x": x[:n_train], "y": y[:n_train]}
        self.val_arrays = {"x": x[n_train:], "y": y[n_train:]}
        seed_everything(seed)
        self.model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
        self.model.register_parameter("frozen", nn.Parameter(torch.ones(4), requires_grad=False))

    def loss(self, model, batch):
        loss = F.cross_entropy(model(batch["x"]), batch["y"])
        return loss, {"n": float(len(batch["y"]))}

    def evaluate(self, model, arrays):
        logits = model(arrays["x"])
        return {"loss": float(F.cross_entropy(logits, arrays["y"])), "acc": float((logits.argmax(-1) == arrays["y"]).float().mean())}

    def select(self, metrics):
        return (metrics["acc"], -metrics["loss"])


def _lines(path: Path) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    for r in rows:
        r.pop("time_s", None)
    return rows


def _cfg(out, **kw) -> LoopConfig:
    return LoopConfig(**{"epochs": 4, "batch_size": 16, "lr": 1e-2, "seed": 0, "out_dir": str(out), "device": "cpu", **kw})


def test_toy_task_satisfies_protocol():
    assert isinstance(ToyTask(), Task)


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_loop(ToyTask(seed), _cfg(tmp_path / name, seed=seed))
        runs[name] = (_lines(tmp_path / name / "metrics/train_metrics.jsonl"), _lines(tmp_path / name / "metrics/val_metrics.jsonl"))
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]
    assert [r["epoch"] for r in runs["a"][1]] == [1, 2, 3, 4]
    assert runs["a"][1][-1]["acc"] > 0.6  # it learns


def test_resume_matches_uninterrupted_run(tmp_path):
    full = run_loop(ToyTask(0), _cfg(tmp_path / "full"))
    run_loop(ToyTask(0), _cfg(tmp_path / "cut", epochs=2))
    assert len(_lines(tmp_path / "cut/metrics/val_metrics.jsonl")) == 2
    resumed = run_loop(ToyTask(0), _cfg(tmp_path / "cut", epochs=4, resume=True))
    assert "resumed from" in (tmp_path / "cut/logs/stdout.log").read_text()
    for name in ("train_metrics.jsonl", "val_metrics.jsonl"):
        assert _lines(tmp_path / "cut/metrics" / name) == _lines(tmp_path / "full/metrics" / name)
    assert resumed["last"]["val"] == full["last"]["val"]
    assert resumed["best"] == full["best"]
    a = torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (BaseException, so no handler catches it)."""


@pytest.mark.parametrize("kill_after", ["metrics", "last.pt"])
def test_kill_around_the_epoch_commit_then_resume_matches_uninterrupted(tmp_path, monkeypatch, kill_after):
    import heads.checkpoint as tl

    full = run_loop(ToyTask(0), _cfg(tmp_path / "full"))
    real_save, real_append = tl.atomic_save, tl.append_line

    def save(obj, path):
        real_save(obj, path)
        if kill_after == "last.pt" and path.name == "last.pt" and obj["epoch"] == 2:
            raise _Killed

    def append(path, row):
        real_append(path, row)
        if kill_after == "metrics" and path.name == "val_metrics.jsonl" and row["epoch"] == 3:
            raise _Killed  # epoch 3's lines are on disk, its checkpoint is not

    monkeypatch.setattr(tl, "atomic_save", save)
    monkeypatch.setattr(tl, "append_line", append)
    with pytest.raises(_Killed):
        run_loop(ToyTask(0), _cfg(tmp_path / "cut"))
    monkeypatch.undo()
    resumed = run_loop(ToyTask(0), _cfg(tmp_path / "cut", resume=True))
    for name in ("train_metrics.jsonl", "val_metrics.jsonl"):
        assert _lines(tmp_path / "cut/metrics" / name) == _lines(tmp_path / "full/metrics" / name), name
    assert resumed["last"]["val"] == full["last"]["val"] and resumed["best"] == full["best"]


def test_resume_survives_a_metrics_line_cut_short(tmp_path):
    run_loop(ToyTask(0), _cfg(tmp_path / "full"))
    run_loop(ToyTask(0), _cfg(tmp_path / "cut", epochs=2))
    with open(tmp_path / "cut/metrics/val_metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "loss": 0.5')  # the kill came mid-write
    run_loop(ToyTask(0), _cfg(tmp_path / "cut", resume=True))
    assert _lines(tmp_path / "cut/metrics/val_metrics.jsonl") == _lines(tmp_path / "full/metrics/val_metrics.jsonl")


def test_resume_refuses_a_changed_loop_config(tmp_path):
    run_loop(ToyTask(0), _cfg(tmp_path, epochs=2))
    with pytest.raises(ValueError, match=r"LoopConfig changed \(lr: 0.01 -> 1e-05, seed: 0 -> 7\)"):
        run_loop(ToyTask(0), _cfg(tmp_path, epochs=4, lr=1e-5, seed=7, resume=True))
    run_loop(ToyTask(0), _cfg(tmp_path, epochs=3, resume=True, save_every_epoch=True))  # allowed changes


class BatchNormTask(ToyTask):
    """ToyTask with a BatchNorm: its running statistics are buffers that training changes."""

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        seed_everything(seed)
        self.model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def test_checkpoints_keep_the_buffers_of_trained_modules(tmp_path):
    task = BatchNormTask(0)
    full = run_loop(task, _cfg(tmp_path / "full"))
    last = torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=True)["model"]
    assert {"1.running_mean", "1.running_var", "1.num_batches_tracked"} <= set(last)
    fresh = BatchNormTask(3)
    load_trainable(fresh.model, {"model": last})
    with torch.no_grad():
        torch.testing.assert_close(fresh.model.eval()(task.val_arrays["x"]), task.model.eval()(task.val_arrays["x"]))
    run_loop(BatchNormTask(0), _cfg(tmp_path / "cut", epochs=2))
    resumed = run_loop(BatchNormTask(0), _cfg(tmp_path / "cut", resume=True))
    assert resumed["last"]["val"] == full["last"]["val"]


def test_checkpoints_load_weights_only_and_hold_trainable_only(tmp_path):
    task = ToyTask(0)
    res = run_loop(task, _cfg(tmp_path, epochs=3, save_every_epoch=True))
    ck = tmp_path / "checkpoints"
    assert {p.name for p in ck.iterdir()} == {"last.pt", "best.pt", "epoch_001.pt", "epoch_002.pt", "epoch_003.pt"}
    last = torch.load(ck / "last.pt", weights_only=True)
    assert last["epoch"] == 3 and "frozen" not in last["model"]
    assert set(last["model"]) == {n for n, p in task.model.named_parameters() if p.requires_grad}
    assert last["metrics"]["val"] == res["last"]["val"] and "state" in last["optimizer"]
    best = torch.load(ck / "best.pt", weights_only=True)
    assert best["epoch"] == res["best"]["epoch"]
    fresh = ToyTask(5)
    load_trainable(fresh.model, ck / "last.pt")
    fresh.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh.model(task.val_arrays["x"]), task.model.eval()(task.val_arrays["x"]))
    import yaml

    resolved = yaml.safe_load((tmp_path / "config_resolved.yaml").read_text())
    assert resolved["loop"]["epochs"] == 3 and resolved["loop"]["world_size"] == 1
    assert not list(ck.glob(".*tmp*"))  # atomic writes leave no temporaries


@pytest.mark.parametrize("field, value", [("epochs", 0), ("batch_size", -1), ("lr", 0.0), ("weight_decay", -1.0), ("grad_clip", -0.5), ("amp", "fp16"), ("device", "tpu")])
def test_loop_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"LoopConfig.{field}"):
        LoopConfig(**{field: value})


DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    torch.set_num_threads(1)
    from heads.train_loop import LoopConfig, run_loop
    from tests.test_train_loop import ToyTask
    res = run_loop(ToyTask(0), LoopConfig(epochs=3, batch_size=8, lr=1e-2, out_dir=sys.argv[1], device="cpu"))
    import torch.distributed as dist
    assert dist.get_world_size() == 2
    from pathlib import Path
    Path(sys.argv[2], f"rank{res['rank']}.txt").write_text(repr(res["last"]["val"]["acc"]))  # the test's own marker
    dist.destroy_process_group()
    """
)


def test_torchrun_two_processes(tmp_path):
    script = tmp_path / "ddp_toy.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    marks = tmp_path / "marks"
    marks.mkdir()
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script), str(out), str(marks)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    done = {m.name: m.read_text() for m in marks.iterdir()}
    assert sorted(done) == ["rank0.txt", "rank1.txt"] and done["rank0.txt"] == done["rank1.txt"]  # identical models on both ranks
    assert [r["epoch"] for r in _lines(out / "metrics/val_metrics.jsonl")] == [1, 2, 3]
    assert [r["epoch"] for r in _lines(out / "metrics/train_metrics.jsonl")] == [1, 2, 3]
    log = (out / "logs/stdout.log").read_text()
    assert log.count("epoch 3/3") == 1
    import yaml

    assert yaml.safe_load((out / "config_resolved.yaml").read_text())["loop"]["world_size"] == 2
    assert torch.load(out / "checkpoints/last.pt", weights_only=True)["epoch"] == 3
