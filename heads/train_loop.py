"""The one training loop every head in ``heads/`` shares. Read it top to bottom.

A head implements the small ``Task`` protocol (a model, its data as in-memory tensors, a loss, an
evaluation and a ranking of evaluations) and calls ``run_loop(task, LoopConfig(...))``. The loop does
the rest: seeding, AdamW, gradient clipping, bf16 autocast on CUDA, checkpoints (``last.pt``,
``best.pt``, optionally ``epoch_XXX.pt``), resuming, metrics JSONL, a log file, the resolved config,
and DDP when launched with ``torchrun --nproc-per-node N``.

Output folder::

    <out_dir>/config_resolved.yaml
    <out_dir>/checkpoints/{last,best,epoch_XXX}.pt    trainable weights + optimizer + epoch + metrics
    <out_dir>/metrics/{train,val}_metrics.jsonl       one line per epoch
    <out_dir>/logs/stdout.log

Data never goes through a DataLoader: the caches are small enough to sit in memory, so one epoch is
a shuffled index, cut into batches, each batch gathered with ``tensor[idx]`` from every array.
Under DDP each rank takes a disjoint shard of that shuffled index, and only rank 0 writes files.

Checkpoints hold only plain containers of tensors / str / int / float / bool (no pickled objects),
so they load with ``torch.load(path, weights_only=True)``.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


# ----------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class LoopConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    amp: str = "auto"  # "auto": bf16 autocast on CUDA, nothing on CPU | "off"
    seed: int = 0
    out_dir: str = "runs/head"
    save_every_epoch: bool = False  # also keep checkpoints/epoch_XXX.pt
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    resume: bool = False  # continue from <out_dir>/checkpoints/last.pt when it exists

    def __post_init__(self):
        def need(ok: bool, name: str, msg: str):
            if not ok:
                raise ValueError(f"LoopConfig.{name} {msg}, got {getattr(self, name)!r}")

        need(isinstance(self.epochs, int) and self.epochs >= 1, "epochs", "must be an int >= 1")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size", "must be an int >= 1")
        need(isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0, "lr", "must be a finite number > 0")
        need(isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(isinstance(self.grad_clip, (int, float)) and self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables)")
        need(self.amp in ("auto", "off"), "amp", "must be 'auto' or 'off'")
        need(isinstance(self.seed, int), "seed", "must be an int")
        need(isinstance(self.out_dir, (str, os.PathLike)) and str(self.out_dir) != "", "out_dir", "must be a non-empty path")
        need(self.device == "auto" or self.device == "cpu" or str(self.device).startswith("cuda"), "device", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if str(self.device).startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"LoopConfig.device is {self.device!r} but CUDA is not available")

    @classmethod
    def from_dict(cls, d: dict) -> "LoopConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"LoopConfig: unknown field(s) {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)


# ----------------------------------------------------------------------------------------------
# what a head provides


@runtime_checkable
class Task(Protocol):
    """A head, as the loop sees it.

    model          nn.Module; only parameters with ``requires_grad`` are trained and checkpointed.
    train_arrays   {name: tensor [N, ...]}: the whole train split in memory, same N for every array.
    val_arrays     {name: tensor [M, ...]}.
    loss(model, batch) -> (scalar loss tensor, {name: float} running stats); ``model`` may be the
                   DDP wrapper, so call it rather than reaching into its submodules.
    evaluate(model, arrays) -> {name: float}: metrics on a whole split (model in eval mode, no grad).
    select(metrics) -> tuple: rank of a val evaluation; the largest tuple is the best checkpoint.
    """

    model: nn.Module
    train_arrays: dict[str, torch.Tensor]
    val_arrays: dict[str, torch.Tensor]

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]: ...

    def evaluate(self, model: nn.Module, arrays: dict[str, torch.Tensor]) -> dict[str, float]: ...

    def select(self, metrics: dict[str, float]) -> tuple: ...


# ----------------------------------------------------------------------------------------------
# helpers: seeding, devices, distributed, files


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA). Same seed on CPU => identical runs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def global_mean(values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean of ``values`` [n] (weights [n], default 1) whose gradient under DDP is that of
    the mean over ALL ranks' elements.

    DDP averages gradients over ranks, so a per-rank mean gives the mean of per-rank means: wrong
    whenever ranks hold different amounts of weight (masked steps, sample weights). While grad is
    enabled in a multi-rank run, the weight sum is all-reduced and the result scaled by the world
    size; elsewhere (one process, evaluation) this is the plain weighted mean. n may be 0.
    """
    w = torch.ones_like(values) if weights is None else weights.to(values.dtype)
    denom, scale = w.sum().detach(), 1.0
    if torch.is_grad_enabled() and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        denom = denom.clone()
        dist.all_reduce(denom)
        scale = float(dist.get_world_size())
    return scale * (values * w).sum() / denom.clamp_min(1e-12)


def _dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) when not launched by it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _pick_device(cfg: LoopConfig, local_rank: int, world: int) -> torch.device:
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if world > 1:  # one GPU per rank
        return torch.device("cuda", local_rank)
    return torch.device("cuda") if cfg.device == "auto" else torch.device(cfg.device)


def trained_keys(model: nn.Module) -> set[str]:
    """State-dict keys a checkpoint must hold: every parameter that trains, plus the persistent
    buffers (e.g. BatchNorm running stats) of each module that owns such a parameter, since they
    change in training too. Frozen backbones stay out."""
    keys = set()
    for prefix, module in model.named_modules():
        own = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        dot = f"{prefix}." if prefix else ""
        keys |= {dot + n for n in own}
        keys |= {dot + n for n, _ in module.named_buffers(recurse=False)}  # non-persistent ones never reach a state dict
    return keys


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``trained_keys`` of the model's state dict, detached, on CPU."""
    keys = trained_keys(model)
    return {n: t.detach().cpu().clone() for n, t in model.state_dict().items() if n in keys}


def load_trainable(model: nn.Module, path_or_state: str | Path | dict) -> dict:
    """Load a checkpoint's trained weights (and buffers) into ``model``; returns the whole checkpoint dict."""
    ckpt = torch.load(path_or_state, map_location="cpu", weights_only=True) if not isinstance(path_or_state, dict) else path_or_state
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    lacking = sorted(trained_keys(model) & set(missing))
    if unexpected or lacking:
        raise RuntimeError(f"checkpoint does not match the model: missing {lacking}, unexpected {unexpected}")
    return ckpt


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _plain(x: Any) -> Any:
    """Numbers / strings / lists / dicts only (checkpoints must load with weights_only=True)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.generic, torch.Tensor)) and getattr(x, "ndim", 0) == 0:
        return x.item()
    if isinstance(x, Path):
        return str(x)
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"cannot store {type(x).__name__} in a checkpoint or metrics line")


def _truncate_jsonl(path: Path, last_epoch: int) -> None:
    """Keep only whole lines of epochs <= ``last_epoch``: later ones were written before a crash
    that came before their checkpoint, and a line cut short by the crash does not parse."""
    if not path.exists():
        return
    keep = []
    for ln in path.read_text().splitlines():
        try:
            row = json.loads(ln)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int) and row["epoch"] <= last_epoch:
            keep.append(ln)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(ln + "\n" for ln in keep))
    os.replace(tmp, path)


def _append_line(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


#: LoopConfig fields a resumed run may change; any other change would silently mix two trainings
RESUMABLE_CHANGES = ("epochs", "resume", "device", "out_dir", "save_every_epoch")


def _check_resume_config(saved: dict, cfg: LoopConfig, path: Path) -> None:
    now = _plain(asdict(cfg))
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and k in saved and saved[k] != now[k])
    if changed:
        diffs = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in changed)
        raise ValueError(f"cannot resume from {path}: LoopConfig changed ({diffs}); only {list(RESUMABLE_CHANGES)} may change "
                         "on resume. Train into a new out_dir, or set the old values back")


# ----------------------------------------------------------------------------------------------
# the loop


def run_loop(task: Task, cfg: LoopConfig, config_dict: dict | None = None, metadata: dict | None = None) -> dict:
    """Train ``task.model`` for ``cfg.epochs`` epochs. Returns {"last": {...}, "best": {...}} metrics.

    config_dict: the head's whole resolved config, written to config_resolved.yaml.
    metadata: plain values stored in every checkpoint (e.g. the head's name and model sizes).
    On return ``task.model`` holds the last epoch's weights (load ``best.pt`` with ``load_trainable``).
    """
    # -- processes and devices ------------------------------------------------------------------
    rank, world, local_rank = _dist_env()
    device = _pick_device(cfg, local_rank, world)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    master = rank == 0
    use_amp = cfg.amp == "auto" and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext

    # -- output folder (rank 0 writes, everyone reads) ------------------------------------------
    out = Path(cfg.out_dir)
    ckpt_dir, metrics_dir, logs_dir = out / "checkpoints", out / "metrics", out / "logs"
    if master:
        for d in (ckpt_dir, metrics_dir, logs_dir):
            d.mkdir(parents=True, exist_ok=True)
    log_file = logs_dir / "stdout.log"

    def log(msg: str) -> None:
        if master:
            print(msg, flush=True)
            with open(log_file, "a") as f:
                f.write(msg + "\n")

    # -- model and optimizer --------------------------------------------------------------------
    seed_everything(cfg.seed)
    model = task.model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the task's model has no trainable parameters")
    # no weight decay on biases and norms (1-d tensors), as usual for AdamW
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model

    # -- resume -----------------------------------------------------------------------------------
    start_epoch, best_rank, best_metrics, best_epoch = 0, None, None, None
    last_train: dict = {}
    last_val: dict = {}
    last_path = ckpt_dir / "last.pt"
    if cfg.resume and last_path.exists():
        ckpt = torch.load(last_path, map_location="cpu", weights_only=True)
        _check_resume_config(ckpt.get("loop_config") or {}, cfg, last_path)
        load_trainable(model, ckpt)
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch = int(ckpt["epoch"])
        best_rank = tuple(ckpt["best_rank"]) if ckpt.get("best_rank") is not None else None
        best_metrics, best_epoch = ckpt.get("best_metrics"), ckpt.get("best_epoch")
        last_train, last_val = ckpt["metrics"]["train"], ckpt["metrics"]["val"]
        log(f"resumed from {last_path} at epoch {start_epoch}")
    if master:
        for name in ("train_metrics.jsonl", "val_metrics.jsonl"):
            if start_epoch:
                _truncate_jsonl(metrics_dir / name, start_epoch)
            else:
                (metrics_dir / name).write_text("")
        import yaml

        resolved = {"loop": _plain(asdict(cfg)), **_plain(config_dict or {})}
        resolved["loop"]["world_size"] = world
        resolved["loop"]["device_resolved"] = str(device)
        (out / "config_resolved.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

    n_train = len(next(iter(task.train_arrays.values())))
    if any(len(v) != n_train for v in task.train_arrays.values()):
        raise ValueError("train_arrays must all have the same first dimension")
    n_trainable = sum(p.numel() for p in params)
    log(f"training {type(model).__name__} ({n_trainable} trainable params) on {device} x{world}, {n_train} train samples, amp={'bf16' if use_amp else 'off'}")

    # -- epochs -------------------------------------------------------------------------------------
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t0 = time.time()
        # Reseed per epoch: dropout etc. depend only on (seed, epoch), so a resumed run matches an
        # uninterrupted one exactly; the shuffle uses its own generator, identical on every rank.
        seed_everything(cfg.seed * 100_003 + epoch)
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        perm = torch.randperm(n_train, generator=g)
        per_rank = n_train // world  # equal step counts on every rank (DDP syncs each step)
        shard = perm[rank * per_rank : (rank + 1) * per_rank] if world > 1 else perm

        train_model.train()
        sums: dict[str, float] = {}
        n_batches = 0
        for i in range(0, len(shard), cfg.batch_size):
            idx = shard[i : i + cfg.batch_size]
            batch = {k: v[idx].to(device, non_blocking=True) for k, v in task.train_arrays.items()}
            with autocast():
                loss, stats = task.loss(train_model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                stats = {**stats, "grad_norm": float(nn.utils.clip_grad_norm_(params, cfg.grad_clip))}
            optimizer.step()
            for k, v in {"loss": float(loss.detach()), **stats}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n_batches += 1
        running = {f"running_{k}": v / max(n_batches, 1) for k, v in sums.items()}
        if world > 1:  # average the running stats over ranks (same keys everywhere)
            keys = sorted(running)
            t = torch.tensor([running[k] for k in keys], dtype=torch.float64, device=device)
            dist.all_reduce(t)
            running = {k: float(x) / world for k, x in zip(keys, t.tolist())}

        # every rank evaluates the (identical) model on the whole splits; only rank 0 writes
        model.eval()
        with torch.no_grad(), autocast():
            train_eval = task.evaluate(model, task.train_arrays)
            val_eval = task.evaluate(model, task.val_arrays)
        last_train = {"epoch": epoch, **_plain(train_eval), **running, "time_s": round(time.time() - t0, 4)}
        last_val = {"epoch": epoch, **_plain(val_eval)}
        rank_now = tuple(_plain(list(task.select(val_eval))))
        improved = best_rank is None or rank_now > best_rank
        if improved:
            best_rank, best_metrics, best_epoch = rank_now, last_val, epoch

        if master:
            ckpt = {
                "model": trainable_state(model),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "metrics": {"train": last_train, "val": last_val},
                "best_rank": list(best_rank),
                "best_metrics": best_metrics,
                "best_epoch": best_epoch,
                "metadata": _plain(metadata or {}),
                "loop_config": _plain(asdict(cfg)),
            }
            # metrics first, last.pt last: a crash anywhere before last.pt replays this epoch on
            # resume, and resume drops the metrics lines of epochs after last.pt's
            _append_line(metrics_dir / "train_metrics.jsonl", last_train)
            _append_line(metrics_dir / "val_metrics.jsonl", last_val)
            if improved:
                _atomic_save(ckpt, ckpt_dir / "best.pt")
            if cfg.save_every_epoch:
                _atomic_save(ckpt, ckpt_dir / f"epoch_{epoch:03d}.pt")
            _atomic_save(ckpt, last_path)
        short = {k: round(v, 4) for k, v in last_val.items() if isinstance(v, float)}
        log(f"epoch {epoch}/{cfg.epochs} loss {running.get('running_loss', float('nan')):.4f} val {short}{' *best*' if improved else ''} ({time.time() - t0:.2f}s)")

    if world > 1:
        dist.barrier()
    return {"last": {"train": last_train, "val": last_val}, "best": {"epoch": best_epoch, "val": best_metrics}, "rank": rank, "world_size": world}


def is_master() -> bool:
    return _dist_env()[0] == 0
