"""The one training loop every head in ``heads/`` shares. Read ``run_loop`` top to bottom.

A head implements the small ``Task`` protocol (a model, its data, a loss, an evaluation and a
ranking of evaluations) and calls ``run_loop(task, LoopConfig(...))``. The loop does the rest:
seeding, AdamW with a warmup + constant/cosine learning-rate schedule, gradient accumulation and
clipping, an optional EMA of the weights, bf16 autocast on CUDA, checkpoints (``last.pt``,
``best.pt``, optionally ``epoch_XXX.pt``; also every N steps), resuming (also in the middle of an
epoch), metrics JSONL, a log file, the resolved config, and DDP when launched with
``torchrun --nproc-per-node N``.

Output folder::

    <out_dir>/config_resolved.yaml
    <out_dir>/checkpoints/{last,best,epoch_XXX}.pt   see ``_checkpoint``
    <out_dir>/metrics/{train,val}_metrics.jsonl      one row per evaluation (each epoch end, and
                                                     every ``eval_every_steps``), with epoch and step
    <out_dir>/metrics/train_steps.jsonl              running stats every ``log_every_steps``
    <out_dir>/logs/stdout.log

Steps: one optimizer step takes ``grad_accum`` batches from the task's ``BatchSource``
(``heads.batches``). Under DDP each rank reads its own shard, ``batch_size`` is per rank and
per micro-batch, and only rank 0 writes files. Every rank evaluates the (identical) model itself.
"""
from __future__ import annotations

import atexit
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from navcache.heads import checkpoint, console
from navcache.heads.loop_config import LoopConfig  # noqa: F401  (re-exported: heads build their configs with it)
from navcache.heads.task import StreamingTask, Task, train_source  # noqa: F401  (re-exported)
from navcache.heads.batches import BatchSource, batch_len, evaluate_split
from navcache.heads.checkpoint import load_trainable, trainable_state, trained_keys  # noqa: F401  (re-exported for heads)
from navcache.heads.ema import EMA
from navcache.heads.schedule import make_scheduler
from navcache.heads.distributed import dist_env, global_mean, is_master, pick_device, seed_everything  # noqa: F401  (re-exported)

# ----------------------------------------------------------------------------------------------
# the state of one run


@dataclass
class _Env:
    """Where this process runs and writes: fixed for the whole run."""

    rank: int
    world: int
    device: torch.device
    amp: bool  # bf16 autocast
    out: Path

    @property
    def master(self) -> bool:
        return self.rank == 0

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()

    def log(self, msg: str, console_msg: str | None = None) -> None:
        """``msg`` to the log file, and ``console_msg`` (default ``msg``) to stdout; rank 0 only."""
        if self.master:
            console.say(msg if console_msg is None else console_msg)
            with open(self.path("logs", "stdout.log"), "a") as f:
                f.write(msg + "\n")


@dataclass
class _Progress:
    """Everything a checkpoint restores besides weights, optimizer, schedule, EMA and data position."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken in all
    epoch_step: int = 0  # optimizer steps taken in the epoch under way (0 between epochs)
    lr: float = 0.0  # learning rate of the last step
    since_eval: dict = field(default_factory=lambda: {"sums": {}, "n": 0})  # running stats since the last evaluation
    since_log: dict = field(default_factory=lambda: {"sums": {}, "n": 0})  # ... since the last log row
    best_rank: list | None = None
    best_metrics: dict | None = None
    best_epoch: int | None = None
    best_step: int | None = None
    last_train: dict = field(default_factory=dict)
    last_val: dict = field(default_factory=dict)


@dataclass
class _Run:
    task: Any
    cfg: LoopConfig
    env: _Env
    model: nn.Module  # the task's model, on the device
    train_model: nn.Module  # the DDP wrapper of ``model``, or ``model`` itself
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: EMA | None
    source: BatchSource
    steps_per_epoch: int
    metadata: dict
    prog: _Progress = field(default_factory=_Progress)
    clock: float = field(default_factory=time.time)  # start of the epoch (or of the resumed part of it)
    started: float = field(default_factory=time.time)  # start of this process's run (elapsed, ETA)
    first_step: int = 0  # optimizer steps already taken when this process started (resume)
    bar: Any = None  # the epoch's progress bar (``console.step_bar``)


# ----------------------------------------------------------------------------------------------
# the loop


def run_loop(task: Task | StreamingTask, cfg: LoopConfig, config_dict: dict | None = None, metadata: dict | None = None) -> dict:
    """Train ``task.model`` for ``cfg.epochs`` epochs. Returns {"last": {...}, "best": {...}, "rank", "world_size"}.

    config_dict: the head's whole resolved config, written to config_resolved.yaml.
    metadata: plain values stored in every checkpoint (e.g. the head's name and model sizes).
    On return ``task.model`` holds the last step's training weights, in eval mode (load ``best.pt``
    with ``load_trainable`` for the best evaluation's weights, the EMA ones when EMA is on).
    """
    env = _setup(cfg)
    run = _build(task, cfg, env, metadata or {})
    resume_state = _resume(run)
    _start_files(run, config_dict or {})
    run.started, run.first_step = time.time(), run.prog.step
    first = run.prog.epoch + 1
    for epoch in range(first, cfg.epochs + 1):
        _train_epoch(run, epoch, resume_state if epoch == first else None)
    run.model.eval()
    if env.world > 1:
        dist.barrier()
    p = run.prog
    best = {"epoch": p.best_epoch, "step": p.best_step, "val": p.best_metrics, "rule": console.best_rule(task),
            "key_metrics": console.key_metrics(task, p.best_metrics or {})}
    return {"last": {"train": p.last_train, "val": p.last_val}, "best": best, "rank": env.rank, "world_size": env.world}


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _setup(cfg: LoopConfig) -> _Env:
    """Processes, device and output folder (rank 0 creates it, everyone reads it)."""
    rank, world, local_rank = dist_env()
    device = pick_device(cfg.device, local_rank, world)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        # torch leaves the group to interpreter teardown otherwise, where gloo's threads can still be
        # alive ("terminate called without an active exception", SIGABRT after a finished run)
        atexit.register(_destroy_group)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    env = _Env(rank, world, device, amp=cfg.amp == "auto" and device.type == "cuda", out=Path(cfg.out_dir))
    if env.master:
        for d in ("checkpoints", "metrics", "logs"):
            env.path(d).mkdir(parents=True, exist_ok=True)
    return env


def _build(task: Any, cfg: LoopConfig, env: _Env, metadata: dict) -> _Run:
    """Model on the device, AdamW, the lr schedule, the EMA and the batch source."""
    seed_everything(cfg.seed)
    model = task.model.to(env.device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the task's model has no trainable parameters")
    # a task may give its own parameter groups ({"params", "lr"}: per-group rates, all following the
    # schedule); each is split again: no weight decay on biases and norms (1-d tensors), as usual for AdamW
    given = task.param_groups(model) if hasattr(task, "param_groups") else [{"params": params}]
    if sorted(id(p) for g in given for p in g["params"]) != sorted(id(p) for p in params):
        raise ValueError("the task's param_groups must hold every trainable parameter exactly once, and nothing else")
    groups = [{**g, "params": [p for p in g["params"] if (p.ndim >= 2) == decay], "weight_decay": cfg.weight_decay if decay else 0.0}
              for g in given for decay in (True, False)]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    train_model = model
    if env.world > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    source = train_source(task, cfg, env.rank, env.world)
    steps_per_epoch = -(-len(source) // cfg.grad_accum)
    if steps_per_epoch == 0:
        raise ValueError(f"no training batches on rank {env.rank} of {env.world}: the train split is smaller than the number of processes")
    scheduler = make_scheduler(optimizer, schedule=cfg.schedule, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                               total_steps=cfg.epochs * steps_per_epoch, min_lr=cfg.min_lr)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    run = _Run(task, cfg, env, model, train_model, params, optimizer, scheduler, ema, source, steps_per_epoch, metadata)
    run.prog.lr = optimizer.param_groups[0]["lr"]
    return run


def _resume(run: _Run) -> dict | None:
    """Load ``last.pt`` when resuming; returns this rank's data + RNG state if it was taken mid-epoch."""
    path = run.env.path("checkpoints", "last.pt")
    if not (run.cfg.resume and path.exists()):
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint.check_resume_config(ckpt.get("loop_config") or {}, checkpoint.plain(asdict(run.cfg)), path)
    load_trainable(run.model, ckpt, prefer_ema=False)
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scheduler") is not None:
        run.scheduler.load_state_dict(ckpt["scheduler"])
    if run.ema is not None and ckpt.get("ema") is not None:
        run.ema.load_state_dict(ckpt["ema"])
    p = run.prog
    saved = ckpt.get("progress") or {}
    for k in ("epoch_step", "lr", "best_step"):
        if k in saved:
            setattr(p, k, saved[k])
    p.epoch = int(ckpt["epoch"])
    p.step = int(ckpt.get("step", p.epoch * run.steps_per_epoch))
    p.best_rank, p.best_metrics, p.best_epoch = ckpt.get("best_rank"), ckpt.get("best_metrics"), ckpt.get("best_epoch")
    p.last_train, p.last_val = ckpt["metrics"]["train"], ckpt["metrics"]["val"]
    run.env.log(f"resumed from {path} at epoch {p.epoch}, step {p.step}")
    ranks = ckpt.get("ranks") or []
    if len(ranks) != run.env.world:
        if p.epoch_step:
            raise ValueError(f"cannot resume from {path}: it was taken mid-epoch by {len(ranks)} process(es), this run has "
                             f"{run.env.world}; resume with the same number of processes")
        return None  # between epochs: a new world size only restarts the running stats of the next log row
    mine = ranks[run.env.rank]
    p.since_eval, p.since_log = mine["running"]["since_eval"], mine["running"]["since_log"]
    return mine if "data" in mine else None


def _start_files(run: _Run, config_dict: dict) -> None:
    """Metrics files emptied (new run) or cut back to the checkpoint (resume); config_resolved.yaml."""
    env, p = run.env, run.prog
    if not env.master:
        return
    for name in ("train_metrics.jsonl", "val_metrics.jsonl", "train_steps.jsonl"):
        if p.step or p.epoch:
            checkpoint.truncate_jsonl(env.path("metrics", name), p.epoch, p.step)
        else:
            env.path("metrics", name).write_text("")
    import yaml

    resolved = {"loop": checkpoint.plain(asdict(run.cfg)), **checkpoint.plain(config_dict)}
    resolved["loop"]["world_size"] = env.world
    resolved["loop"]["device_resolved"] = str(env.device)
    env.path("config_resolved.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    n_trainable = sum(p.numel() for p in run.params)
    env.log(f"training {type(run.model).__name__} ({n_trainable} trainable params) on {env.device} x{env.world}, "
            f"{len(run.source)} batches of {run.cfg.batch_size} per rank per epoch, {run.steps_per_epoch} steps per epoch, "
            f"amp={'bf16' if env.amp else 'off'}")
    env.log(f"best.pt keeps the evaluation with the {console.best_rule(run.task)} (marked * below)")


def _train_epoch(run: _Run, epoch: int, resume_state: dict | None) -> None:
    """All optimizer steps of ``epoch`` (those left, when resuming inside it)."""
    # Reseed per epoch: dropout etc. depend only on (seed, epoch), so a resumed run matches an
    # uninterrupted one exactly; a mid-epoch checkpoint carries the generators' states instead.
    seed_everything(run.cfg.seed * 100_003 + epoch)
    run.source.set_epoch(epoch)
    if resume_state is not None:
        run.source.load_state_dict(resume_state["data"])
        checkpoint.set_rng_state(resume_state["rng"], run.env.device)
    else:
        run.prog.epoch_step = 0
    run.clock = time.time()
    n_batches, k = len(run.source), run.cfg.grad_accum
    batches = iter(run.source)
    run.train_model.train()
    run.bar = console.step_bar(run.env.master, run.steps_per_epoch, run.prog.epoch_step, f"epoch {epoch}/{run.cfg.epochs}")
    try:
        for s in range(run.prog.epoch_step, run.steps_per_epoch):
            want = min(k, n_batches - s * k)
            group = list(islice(batches, want))
            if len(group) != want:
                raise RuntimeError(f"the batch source yielded fewer batches than its len() ({n_batches}) in epoch {epoch}")
            stats = _optimizer_step(run, group)
            run.bar.update(1)
            _after_step(run, epoch, stats)
    finally:
        run.bar.close()


def _optimizer_step(run: _Run, group: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """One optimizer step over the micro-batches of ``group``.

    Each micro-batch's loss is weighted by its share of the group's samples, so for a loss that is
    a mean over samples the summed gradient is that of one batch holding them all. Under DDP only
    the last micro-batch all-reduces gradients (``no_sync`` before it). Returns the step's stats
    (loss and the task's stats, weighted the same way; grad_norm when clipping).
    """
    sizes = [batch_len(b) for b in group]
    total = sum(sizes)
    run.optimizer.zero_grad(set_to_none=True)
    stats: dict[str, float] = {}
    for i, (batch, n) in enumerate(zip(group, sizes)):
        w = n / total
        last = i == len(group) - 1
        sync = nullcontext() if last or run.env.world == 1 else run.train_model.no_sync()
        with sync:
            batch = {key: v.to(run.env.device, non_blocking=True) if torch.is_tensor(v) else v for key, v in batch.items()}
            with run.env.autocast():
                loss, task_stats = run.task.loss(run.train_model, batch)
            (loss if len(group) == 1 else loss * w).backward()
        for key, v in {"loss": float(loss.detach()), **task_stats}.items():
            stats[key] = stats.get(key, 0.0) + w * float(v)
    if run.cfg.grad_clip > 0:
        stats["grad_norm"] = float(nn.utils.clip_grad_norm_(run.params, run.cfg.grad_clip))
    run.prog.lr = run.optimizer.param_groups[0]["lr"]
    run.optimizer.step()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(run.model)
    return stats


def _after_step(run: _Run, epoch: int, stats: dict[str, float]) -> None:
    """Bookkeeping after optimizer step ``prog.step``: log, evaluate, checkpoint, whichever is due.

    Every rank takes the same decisions (they depend on the step only), since the running-stat
    reductions and the gathering of data states are collective. An epoch's last step always
    evaluates and writes last.pt.
    """
    p, cfg = run.prog, run.cfg
    p.step += 1
    p.epoch_step += 1
    for acc in (p.since_eval, p.since_log):
        _accumulate(acc, stats)
    end = p.epoch_step == run.steps_per_epoch
    if end:
        p.epoch, p.epoch_step = epoch, 0

    def due(every: int) -> bool:
        return every > 0 and p.step % every == 0

    if due(cfg.log_every_steps):
        _log_step(run, epoch)
    evaluate, save = end or due(cfg.eval_every_steps), end or due(cfg.save_every_steps)
    if not (evaluate or save):
        return
    improved = _evaluate(run, epoch) if evaluate else False
    ckpt = _checkpoint(run, mid_epoch=not end)  # on every rank: collective mid-epoch
    if run.env.master:
        # metrics rows are already on disk; last.pt goes last: a crash before it replays these
        # steps on resume, and resume drops the rows of steps after last.pt's
        if improved:
            checkpoint.atomic_save(ckpt, run.env.path("checkpoints", "best.pt"))
        if end and cfg.save_every_epoch:
            checkpoint.atomic_save(ckpt, run.env.path("checkpoints", f"epoch_{epoch:03d}.pt"))
        if save:
            checkpoint.atomic_save(ckpt, run.env.path("checkpoints", "last.pt"))


def _evaluate(run: _Run, epoch: int) -> bool:
    """Evaluate train and val (EMA weights when on), append their rows; True when val is the best yet."""
    cfg, p, env, model = run.cfg, run.prog, run.env, run.model
    with run.ema.applied(model) if run.ema is not None else nullcontext():
        model.eval()
        try:
            with torch.no_grad(), env.autocast():
                train_eval = evaluate_split(run.task, model, "train", cfg.batch_size, cfg.eval_max_batches)
                val_eval = evaluate_split(run.task, model, "val", cfg.batch_size, cfg.eval_max_batches)
        finally:
            model.train()
    running = _reduce_running(run, p.since_eval)
    where = {"epoch": epoch, "step": p.step}
    p.last_train = {**where, **checkpoint.plain(train_eval), **running, "lr": p.lr, "time_s": round(time.time() - run.clock, 4)}
    p.last_val = {**where, **checkpoint.plain(val_eval)}
    rank_now = checkpoint.plain(list(run.task.select(val_eval)))
    improved = p.best_rank is None or tuple(rank_now) > tuple(p.best_rank)
    if improved:
        p.best_rank, p.best_metrics, p.best_epoch, p.best_step = rank_now, p.last_val, epoch, p.step
    if env.master:
        checkpoint.append_line(env.path("metrics", "train_metrics.jsonl"), p.last_train)
        checkpoint.append_line(env.path("metrics", "val_metrics.jsonl"), p.last_val)
    short = {k: round(v, 4) for k, v in p.last_val.items() if isinstance(v, float)}
    at = f"epoch {epoch}/{cfg.epochs}" if p.epoch_step == 0 else f"step {p.step} (epoch {epoch}, step {p.epoch_step} of {run.steps_per_epoch})"
    loss = running.get("running_loss", float("nan"))
    where = f"epoch {epoch}/{cfg.epochs}" + ("" if p.epoch_step == 0 else f" step {p.epoch_step}/{run.steps_per_epoch}")
    elapsed, done = time.time() - run.started, p.step - run.first_step
    eta = elapsed / done * (cfg.epochs * run.steps_per_epoch - p.step) if done else None
    env.log(f"{at} loss {loss:.4f} val {short}{' *best*' if improved else ''} ({time.time() - run.clock:.2f}s)",
            console.eval_line(where, loss, p.last_val, console.key_metrics(run.task, p.last_val), improved, elapsed, eta))
    return improved


def _log_step(run: _Run, epoch: int) -> None:
    """Running stats since the last log row, to train_steps.jsonl and the log."""
    p = run.prog
    row = {"epoch": epoch, "step": p.step, "lr": p.lr, **_reduce_running(run, p.since_log), "time_s": round(time.time() - run.clock, 4)}
    if run.env.master:
        checkpoint.append_line(run.env.path("metrics", "train_steps.jsonl"), row)
    run.env.log(f"step {p.step} (epoch {epoch}) loss {row.get('running_loss', float('nan')):.4f} lr {p.lr:.3g}")


def _checkpoint(run: _Run, mid_epoch: bool) -> dict:
    """The checkpoint dict (collective under DDP: gathers every rank's own state).

    model / ema      trained tensors (``trained_keys``), training and EMA weights ("ema" only when on)
    optimizer / scheduler   their state dicts
    epoch / step     completed epochs / optimizer steps taken
    progress         position in the epoch, running-stat sums, lr of the last step, best step
    ranks            per rank {"running": its running-stat sums; mid-epoch also "data": its BatchSource
                     state, "rng": its generator states}
    metrics, best_rank, best_metrics, best_epoch, metadata, loop_config, world_size
    """
    p = run.prog
    ranks = _gather_rank_states(run, mid_epoch)
    if not run.env.master:
        return {}
    ckpt = {
        "model": trainable_state(run.model),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": checkpoint.plain(run.scheduler.state_dict()),
        "epoch": p.epoch,
        "step": p.step,
        "progress": checkpoint.plain({"epoch_step": p.epoch_step, "lr": p.lr, "best_step": p.best_step}),
        "ranks": ranks,
        "metrics": {"train": p.last_train, "val": p.last_val},
        "best_rank": p.best_rank,
        "best_metrics": p.best_metrics,
        "best_epoch": p.best_epoch,
        "metadata": checkpoint.plain(run.metadata),
        "loop_config": checkpoint.plain(asdict(run.cfg)),
        "world_size": run.env.world,
    }
    if run.ema is not None:
        ckpt["ema"] = run.ema.state_dict()
    return ckpt


# ----------------------------------------------------------------------------------------------
# helpers: running stats, distributed


def _accumulate(acc: dict, stats: dict[str, float]) -> None:
    for k, v in stats.items():
        acc["sums"][k] = acc["sums"].get(k, 0.0) + float(v)
    acc["n"] += 1


def _reduce_running(run: _Run, acc: dict) -> dict[str, float]:
    """{running_<stat>: mean over the steps in ``acc`` and over ranks}, and empty ``acc`` (collective)."""
    running = {f"running_{k}": v / max(acc["n"], 1) for k, v in acc["sums"].items()}
    acc["sums"], acc["n"] = {}, 0
    if run.env.world > 1:  # same keys on every rank
        keys = sorted(running)
        t = torch.tensor([running[k] for k in keys], dtype=torch.float64, device=run.env.device)
        dist.all_reduce(t)
        running = {k: float(x) / run.env.world for k, x in zip(keys, t.tolist())}
    return running


def _gather_rank_states(run: _Run, mid_epoch: bool) -> list[dict]:
    """Every rank's running-stat sums (each rank sums its own batches' stats until a row reduces
    them), and mid-epoch its source and generator states, in rank order (collective)."""
    mine: dict = {"running": checkpoint.plain({"since_eval": run.prog.since_eval, "since_log": run.prog.since_log})}
    if mid_epoch:
        mine |= {"data": checkpoint.plain(run.source.state_dict()), "rng": checkpoint.rng_state(run.env.device)}
    if run.env.world == 1:
        return [mine]
    out: list = [None] * run.env.world
    dist.all_gather_object(out, mine)
    return out
