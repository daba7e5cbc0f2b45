"""heads/train_loop.py (+ checkpoint, schedule, ema, batches): seeding, resume (also mid-epoch), weights_only checkpoints,
config validation, lr schedule, EMA, gradient accumulation, streaming batch sources, step-based evaluation, torchrun DDP."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from navcache.heads.batches import BatchSource, TensorBatches
from navcache.heads.train_loop import LoopConfig, StreamingTask, Task, load_trainable, run_loop, seed_everything

REPO = Path(__file__).resolve().parents[2]


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
    import navcache.heads.checkpoint as tl

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
    from navcache.heads.train_loop import LoopConfig, run_loop
    from tests.heads.test_train_loop import ToyTask
    res = run_loop(ToyTask(0), LoopConfig(epochs=3, batch_size=8, lr=1e-2, out_dir=sys.argv[1], device="cpu"))
    import torch.distributed as dist
    assert dist.get_world_size() == 2
    from pathlib import Path
    Path(sys.argv[2], f"rank{res['rank']}.txt").write_text(repr(res["last"]["val"]["acc"]))  # the test's own marker
    dist.barrier()  # both ranks tear gloo down together (one rank destroying while the other was still connected aborted it once in CI)
    dist.destroy_process_group()
    """
)


def _torchrun(script: Path, text: str, *args: Path, timeout: int) -> None:
    """Write ``text`` to ``script`` and run it under real ``torchrun`` with 2 CPU processes; must exit 0."""
    script.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script), *map(str, args)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "run"
    marks = tmp_path / "marks"
    marks.mkdir()
    _torchrun(tmp_path / "ddp_toy.py", DDP_SCRIPT, out, marks, timeout=180)
    done = {m.name: m.read_text() for m in marks.iterdir()}
    assert sorted(done) == ["rank0.txt", "rank1.txt"] and done["rank0.txt"] == done["rank1.txt"]  # identical models on both ranks
    assert [r["epoch"] for r in _lines(out / "metrics/val_metrics.jsonl")] == [1, 2, 3]
    assert [r["epoch"] for r in _lines(out / "metrics/train_metrics.jsonl")] == [1, 2, 3]
    log = (out / "logs/stdout.log").read_text()
    assert log.count("epoch 3/3") == 1
    import yaml

    assert yaml.safe_load((out / "config_resolved.yaml").read_text())["loop"]["world_size"] == 2
    assert torch.load(out / "checkpoints/last.pt", weights_only=True)["epoch"] == 3


# ----------------------------------------------------------------------------------------------
# learning-rate schedule


def _expected_lr(step0: int, lr: float, min_lr: float, warmup: int, total: int, schedule: str) -> float:
    """Written out independently of heads.schedule: warmup line through 0 at step -1, then cosine."""
    if step0 < warmup:
        return lr * (step0 + 1) / warmup
    if schedule == "constant":
        return lr
    t = min(step0 - warmup, total - warmup) / (total - warmup)
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * t)) / 2


def _torch_reference_lrs(lr: float, min_lr: float, warmup: int, total: int) -> list[float]:
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    cos = CosineAnnealingLR(opt, T_max=total - warmup, eta_min=min_lr)
    sched = SequentialLR(opt, [LinearLR(opt, 1 / warmup, 1.0, total_iters=warmup - 1), cos], milestones=[warmup]) if warmup else cos
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("warmup", [0, 1, 7])
def test_schedule_matches_torch_schedulers_and_the_formula(warmup):
    from navcache.heads.schedule import lr_factor

    lr, min_lr, total = 0.1, 0.004, 50
    ours = [lr * lr_factor(s, schedule="cosine", warmup_steps=warmup, total_steps=total, min_ratio=min_lr / lr) for s in range(total)]
    torch.testing.assert_close(ours, _torch_reference_lrs(lr, min_lr, warmup, total), rtol=1e-9, atol=1e-12)
    assert ours == pytest.approx([_expected_lr(s, lr, min_lr, warmup, total, "cosine") for s in range(total)], rel=1e-12)
    if warmup:
        assert ours[0] == pytest.approx(lr / warmup) and ours[warmup - 1] == pytest.approx(lr)
    assert ours[-1] > min_lr and lr * lr_factor(total, schedule="cosine", warmup_steps=warmup, total_steps=total, min_ratio=min_lr / lr) == pytest.approx(min_lr)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_loop_steps_the_schedule_once_per_optimizer_step(tmp_path, schedule):
    # 96 samples / 16 = 6 batches; grad_accum 4 -> steps of 4 and 2 batches: 2 steps per epoch, 6 in all
    min_lr = 1e-3 if schedule == "cosine" else 0.0
    run_loop(ToyTask(0), _cfg(tmp_path, epochs=3, schedule=schedule, warmup_steps=3, min_lr=min_lr, grad_accum=4, log_every_steps=1))
    rows = _lines(tmp_path / "metrics/train_steps.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and [r["epoch"] for r in rows] == [1, 1, 2, 2, 3, 3]
    assert [r["lr"] for r in rows] == pytest.approx([_expected_lr(s, 1e-2, min_lr, 3, 6, schedule) for s in range(6)], rel=1e-12)
    sched = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)["scheduler"]
    assert sched["last_epoch"] == 6


# ----------------------------------------------------------------------------------------------
# EMA


class RecordingTask(ToyTask):
    """ToyTask that keeps the trained weights each loss call sees (the weights before each step)."""

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        self.seen: list[dict[str, torch.Tensor]] = []

    def loss(self, model, batch):
        self.seen.append({k: v.detach().clone() for k, v in model.state_dict().items() if k != "frozen"})
        return super().loss(model, batch)


def test_ema_equals_a_hand_computed_average_and_is_what_is_evaluated(tmp_path):
    decay = 0.8
    task = RecordingTask(0)
    res = run_loop(task, _cfg(tmp_path, epochs=2, ema_decay=decay))
    weights = task.seen + [{k: v.detach().clone() for k, v in task.model.state_dict().items() if k != "frozen"}]
    assert len(weights) == 2 * 6 + 1  # the initial weights and those after each of the 12 steps
    ema = dict(weights[0])
    for w in weights[1:]:
        ema = {k: decay * ema[k] + (1 - decay) * w[k] for k in ema}
    last = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    assert set(last["ema"]) == set(ema)
    for k in ema:
        torch.testing.assert_close(last["ema"][k], ema[k], rtol=1e-6, atol=1e-7)
        assert torch.equal(last["model"][k], weights[-1][k])  # "model" keeps the training weights
    # the logged val metrics are those of the EMA weights; load_trainable gives those by default
    fresh = ToyTask(3)
    load_trainable(fresh.model, tmp_path / "checkpoints/last.pt")
    with torch.no_grad():
        assert fresh.evaluate(fresh.model.eval(), task.val_arrays) == pytest.approx(
            {k: v for k, v in res["last"]["val"].items() if k not in ("epoch", "step")}, rel=1e-6)
    load_trainable(fresh.model, tmp_path / "checkpoints/last.pt", prefer_ema=False)
    assert torch.equal(fresh.model.state_dict()["0.weight"], weights[-1]["0.weight"])
    best = torch.load(tmp_path / "checkpoints/best.pt", weights_only=True)
    assert "ema" in best and best["step"] == res["best"]["step"]


# ----------------------------------------------------------------------------------------------
# gradient accumulation


class NoDropoutTask(ToyTask):
    def __init__(self, seed: int = 0, n_train: int = 92):
        super().__init__(seed, n_train=n_train)
        self.model[2].p = 0.0


def _trained(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "checkpoints/last.pt", weights_only=True)["model"]


def test_grad_accumulation_equals_one_big_batch(tmp_path):
    # 92 samples: the third step accumulates micro-batches of 8, 8, 8 and 4 (weighted by size), the
    # big-batch run's third batch holds the same 28 samples
    run_loop(NoDropoutTask(0), _cfg(tmp_path / "big", epochs=3, batch_size=32))
    run_loop(NoDropoutTask(0), _cfg(tmp_path / "acc", epochs=3, batch_size=8, grad_accum=4))
    run_loop(NoDropoutTask(0), _cfg(tmp_path / "small", epochs=3, batch_size=8))
    big, acc, small = (_trained(tmp_path / n) for n in ("big", "acc", "small"))
    for k in big:
        torch.testing.assert_close(acc[k], big[k], rtol=1e-5, atol=1e-6)
    assert not all(torch.allclose(small[k], big[k], rtol=1e-3, atol=1e-4) for k in big)  # accumulation is what made them equal
    rows = {n: _lines(tmp_path / n / "metrics/train_metrics.jsonl") for n in ("big", "acc")}
    assert [r["step"] for r in rows["acc"]] == [r["step"] for r in rows["big"]] == [3, 6, 9]
    assert rows["acc"][-1]["running_loss"] == pytest.approx(rows["big"][-1]["running_loss"], rel=1e-5)


# ----------------------------------------------------------------------------------------------
# streaming data, step-based evaluation, mid-epoch resume


class NpyBlocks:
    """A streaming ``BatchSource`` for the tests: reads batches from .npy files on disk (memory-mapped),
    in an order shuffled per epoch by blocks of ``block`` batches, never holding the split in memory."""

    def __init__(self, folder: Path, batch_size: int, seed: int, rank: int, world: int, block: int = 2):
        self.x = np.load(folder / "x.npy", mmap_mode="r")
        self.y = np.load(folder / "y.npy", mmap_mode="r")
        self.batch_size, self.seed, self.rank, self.world, self.block = batch_size, seed, rank, world, block
        n_batches = len(self.y) // batch_size // world  # full batches only, equal on every rank
        self.n = n_batches
        self.epoch, self.position = 0, 0

    def _order(self) -> list[int]:
        blocks = [list(range(i, min(i + self.block, self.n))) for i in range(0, self.n, self.block)]
        rng = np.random.default_rng([self.seed, self.epoch])
        return [b for i in rng.permutation(len(blocks)) for b in blocks[i]]

    def set_epoch(self, epoch):
        self.epoch, self.position = epoch, 0

    def __len__(self):
        return self.n

    def __iter__(self):
        order = self._order()
        while self.position < self.n:
            j = order[self.position] * self.world + self.rank
            self.position += 1
            sl = slice(j * self.batch_size, (j + 1) * self.batch_size)
            yield {"x": torch.from_numpy(np.array(self.x[sl])), "y": torch.from_numpy(np.array(self.y[sl]))}

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state):
        self.epoch, self.position = state["epoch"], state["position"]


class StreamingToyTask:
    """ToyTask's data and model, streamed from .npy files; evaluation accumulates over batches."""

    def __init__(self, folder: Path, seed: int = 0):
        toy = ToyTask(seed)
        self.model = toy.model
        for split, arrays in (("train", toy.train_arrays), ("val", toy.val_arrays)):
            (folder / split).mkdir(parents=True, exist_ok=True)
            for k, v in arrays.items():
                np.save(folder / split / f"{k}.npy", v.numpy())
        self.folder = folder
        self.eval_batches_read = []

    def train_batches(self, batch_size, seed, rank, world):
        return NpyBlocks(self.folder / "train", batch_size, seed, rank, world)

    def eval_batches(self, split, batch_size):
        x, y = (np.load(self.folder / split / f"{k}.npy", mmap_mode="r") for k in ("x", "y"))
        for i in range(0, len(y), batch_size):  # stored order, last batch short
            yield {"x": torch.from_numpy(np.array(x[i : i + batch_size])), "y": torch.from_numpy(np.array(y[i : i + batch_size]))}

    def loss(self, model, batch):
        return F.cross_entropy(model(batch["x"]), batch["y"]), {}

    def evaluate_batches(self, model, batches):
        n = correct = 0
        loss = 0.0
        for b in batches:
            logits = model(b["x"])
            loss += float(F.cross_entropy(logits, b["y"], reduction="sum"))
            correct += int((logits.argmax(-1) == b["y"]).sum())
            n += len(b["y"])
        self.eval_batches_read.append(n)
        return {"loss": loss / n, "acc": correct / n, "n": n}

    def select(self, metrics):
        return (metrics["acc"],)


def test_tensor_batches_and_the_streaming_source_follow_the_protocol(tmp_path):
    arrays = ToyTask(0).train_arrays
    src = TensorBatches(arrays, 16, seed=3)
    assert isinstance(src, BatchSource) and isinstance(NpyBlocks(StreamingToyTask(tmp_path).folder / "train", 16, 0, 0, 1), BatchSource)
    assert isinstance(StreamingToyTask(tmp_path), StreamingTask)
    src.set_epoch(2)
    whole = list(src)
    assert len(whole) == len(src) == 6 and sorted(torch.cat([b["y"] for b in whole]).tolist()) == sorted(arrays["y"].tolist())
    src.set_epoch(2)
    first = [next(iter(src)) for _ in range(2)]  # a fresh iterator continues where the last one stopped
    state = src.state_dict()
    assert state == {"epoch": 2, "position": 2} and torch.equal(first[1]["x"], whole[1]["x"])
    other = TensorBatches(arrays, 16, seed=3)
    other.set_epoch(2)
    other.load_state_dict(state)
    assert all(torch.equal(a["x"], b["x"]) for a, b in zip(other, whole[2:]))
    shards = [TensorBatches(arrays, 16, seed=3, rank=r, world=3) for r in range(3)]
    for s in shards:
        s.set_epoch(2)
    ids = [torch.cat([b["y"] for b in s]) for s in shards]
    assert [len(i) for i in ids] == [32, 32, 32] and [len(s) for s in shards] == [2, 2, 2]


def test_step_based_evaluation_reads_at_most_n_batches(tmp_path):
    class Counting(ToyTask):
        def evaluate(self, model, arrays):
            return {**super().evaluate(model, arrays), "n": len(arrays["y"])}

    # 96 / 16 = 6 steps per epoch; evaluations at steps 4, 6 (epoch end), 8, 12 (both)
    run_loop(Counting(0), _cfg(tmp_path / "mem", epochs=2, eval_every_steps=4, eval_max_batches=2))
    val = _lines(tmp_path / "mem/metrics/val_metrics.jsonl")
    assert [(r["epoch"], r["step"]) for r in val] == [(1, 4), (1, 6), (2, 8), (2, 12)]
    assert {r["n"] for r in val} == {32} and {r["n"] for r in _lines(tmp_path / "mem/metrics/train_metrics.jsonl")} == {32}
    task = StreamingToyTask(tmp_path / "data")
    run_loop(task, _cfg(tmp_path / "stream", epochs=2, eval_every_steps=4, eval_max_batches=2, batch_size=12))
    assert task.eval_batches_read == [24] * 8  # train and val at each of 4 evaluations (8 steps per epoch)
    run_loop(task, _cfg(tmp_path / "all", epochs=1, batch_size=12))
    assert task.eval_batches_read[-2:] == [96, 40]  # 0 = the whole split, its last batch short
    assert _lines(tmp_path / "stream/metrics/val_metrics.jsonl")[-1]["acc"] > 0.5


def _kill_at(monkeypatch, file: str, step: int):
    """Make the run die (like SIGKILL) right after rank 0 appends ``file``'s row of ``step``."""
    import navcache.heads.checkpoint as ck

    real = ck.append_line

    def append(path, row):
        real(path, row)
        if path.name == file and row["step"] == step:
            raise _Killed

    monkeypatch.setattr(ck, "append_line", append)


def _everything(out: Path) -> dict:
    ck = torch.load(out / "checkpoints/last.pt", weights_only=True)
    rows = {n: _lines(out / "metrics" / n) for n in ("train_metrics.jsonl", "val_metrics.jsonl", "train_steps.jsonl")}
    return {"rows": rows, "model": ck["model"], "ema": ck.get("ema"), "opt": ck["optimizer"]["state"], "sched": ck["scheduler"],
            "best": torch.load(out / "checkpoints/best.pt", weights_only=True)["model"]}


def _assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


LONG_RUN = dict(epochs=3, grad_accum=2, schedule="cosine", warmup_steps=2, min_lr=1e-3, ema_decay=0.9,
                log_every_steps=1, eval_every_steps=2, save_every_steps=2)


@pytest.mark.parametrize("streaming", [False, True])
def test_mid_epoch_resume_equals_an_uninterrupted_run_bitwise(tmp_path, monkeypatch, streaming):
    # in memory: 6 batches -> 3 steps per epoch; mid-epoch last.pt at steps 2, 4, 8; killed after
    # step 5's log row: resume from step 4 (epoch 2, step 1 of 3), dropout included
    make = (lambda: StreamingToyTask(tmp_path / "data")) if streaming else (lambda: ToyTask(0))
    run_loop(make(), _cfg(tmp_path / "full", **LONG_RUN))
    _kill_at(monkeypatch, "train_steps.jsonl", 5)
    with pytest.raises(_Killed):
        run_loop(make(), _cfg(tmp_path / "cut", **LONG_RUN))
    monkeypatch.undo()
    assert torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)["step"] == 4
    run_loop(make(), _cfg(tmp_path / "cut", **{**LONG_RUN, "resume": True}))
    assert "at epoch 1, step 4" in (tmp_path / "cut/logs/stdout.log").read_text()
    _assert_same(_everything(tmp_path / "cut"), _everything(tmp_path / "full"))


def test_mid_epoch_resume_needs_the_same_number_of_processes(tmp_path, monkeypatch):
    _kill_at(monkeypatch, "train_steps.jsonl", 3)
    with pytest.raises(_Killed):
        run_loop(ToyTask(0), _cfg(tmp_path, **LONG_RUN))
    monkeypatch.undo()
    ck = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    assert ck["step"] == 2 and len(ck["ranks"]) == 1 and ck["ranks"][0]["data"] == {"epoch": 1, "position": 4}
    assert ck["ranks"][0]["running"] == {"since_eval": {"sums": {}, "n": 0}, "since_log": {"sums": {}, "n": 0}}  # both rows just written
    ck["ranks"] = ck["ranks"] * 2  # as if two processes had written it
    torch.save(ck, tmp_path / "checkpoints/last.pt")
    with pytest.raises(ValueError, match="mid-epoch by 2 process"):
        run_loop(ToyTask(0), _cfg(tmp_path, **{**LONG_RUN, "resume": True}))


@pytest.mark.parametrize("change, allowed", [
    ({"ema_decay": 0.5}, False), ({"grad_accum": 3}, False), ({"warmup_steps": 1}, False), ({"eval_max_batches": 1}, False),
    ({"eval_every_steps": 3}, False), ({"epochs": 5}, False),  # cosine: the schedule's length
    ({"save_every_steps": 1, "log_every_steps": 0, "save_every_epoch": True}, True)])
def test_resume_refuses_new_fields_that_change_the_training(tmp_path, change, allowed):
    run_loop(ToyTask(0), _cfg(tmp_path, **LONG_RUN))
    cfg = _cfg(tmp_path, **{**LONG_RUN, **change, "resume": True})
    if allowed:
        run_loop(ToyTask(0), cfg)
    else:
        with pytest.raises(ValueError, match=f"LoopConfig changed \\({next(iter(change))}: "):
            run_loop(ToyTask(0), cfg)


@pytest.mark.parametrize("field, value", [("schedule", "linear"), ("warmup_steps", -1), ("min_lr", 1.0), ("ema_decay", 1.0),
                                          ("grad_accum", 0), ("log_every_steps", 1.5), ("eval_every_steps", True),
                                          ("eval_max_batches", -2), ("save_every_steps", None)])
def test_new_loop_config_fields_are_validated(field, value):
    with pytest.raises(ValueError, match=f"LoopConfig.{field}"):
        LoopConfig(**{"schedule": "cosine", field: value})
    with pytest.raises(ValueError, match="LoopConfig.min_lr applies to schedule 'cosine' only"):
        LoopConfig(min_lr=1e-4)
    assert LoopConfig.from_dict({"schedule": "cosine", "min_lr": 1e-4, "grad_accum": 2}).grad_accum == 2


DDP_LONG_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    import torch.distributed as dist
    import navcache.heads.train_loop as tl
    from navcache.heads.train_loop import LoopConfig, run_loop
    from tests.heads.test_train_loop import NoDropoutTask, ToyTask

    out = Path(sys.argv[1])
    # full batch per rank, in 2 micro-batches of 24: one step per epoch equals one process's batch of 96
    run_loop(NoDropoutTask(0, n_train=96), LoopConfig(epochs=3, batch_size=24, grad_accum=2, lr=1e-2, out_dir=str(out / "acc"), device="cpu"))
    # 48 samples per rank = 6 batches of 8 = 3 steps per epoch; last.pt mid-epoch at step 2; every
    # rank dies at step 3 (before its log row), like a killed job; then the job is resumed
    long = dict(epochs=2, batch_size=8, grad_accum=2, lr=1e-2, device="cpu", schedule="cosine", warmup_steps=1, min_lr=1e-3,
                ema_decay=0.9, log_every_steps=1, save_every_steps=2)
    run_loop(ToyTask(0), LoopConfig(out_dir=str(out / "full"), **long))
    real = tl._log_step

    def die(run, epoch):
        if run.prog.step == 3:
            raise RuntimeError("killed")
        real(run, epoch)

    tl._log_step = die
    try:
        run_loop(ToyTask(0), LoopConfig(out_dir=str(out / "cut"), **long))
        raise SystemExit("the cut run was not cut")
    except RuntimeError:
        pass
    tl._log_step = real
    run_loop(ToyTask(0), LoopConfig(out_dir=str(out / "cut"), resume=True, **long))
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_torchrun_grad_accumulation_and_mid_epoch_resume(tmp_path):
    out = tmp_path / "runs"
    _torchrun(tmp_path / "ddp_long.py", DDP_LONG_SCRIPT, out, timeout=240)
    run_loop(NoDropoutTask(0, n_train=96), _cfg(tmp_path / "single", epochs=3, batch_size=96, lr=1e-2))
    ddp, single = _trained(out / "acc"), _trained(tmp_path / "single")
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-5, atol=1e-6)
    assert "at epoch 0, step 2" in (out / "cut/logs/stdout.log").read_text()
    _assert_same(_everything(out / "cut"), _everything(out / "full"))
