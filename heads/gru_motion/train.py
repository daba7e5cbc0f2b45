"""``navcache train gru-motion``: a GRU over the poses cache's steps, predicting the next and the k-th next bins.

Targets, from the output at step t (which has seen steps <= t):
    next: dist/yaw bins of step t+1;  k-step: dist/yaw bins of step t+k;  (optional) deltas of step t+1.
A (t, target) pair counts only when both step t and the target step are valid (``step_valid``);
padded steps' bins are ``IGNORE_INDEX`` (-100) in the data and the cross-entropy ignores them too.
Baselines on exactly the same pairs: the train split's majority class, and repeating step t's bin.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from navcache.cache_specs.specs.poses import IGNORE_INDEX
from navcache.heads.train_loop import global_mean, load_trainable, run_loop, seed_everything

from .configuration import GruMotionConfig
from .data import load_poses_split
from .export import export_encoder
from .model import GruMotionModel

HEADS = (("next", 1), ("k", None))  # (name, offset); None = config.k


def _pairs(step_valid: torch.Tensor, offset: int) -> torch.Tensor:
    """[N, S] bool: t is valid, t+offset exists and is valid."""
    v = step_valid.bool()
    m = torch.zeros_like(v)
    if offset < v.shape[1]:
        m[:, : v.shape[1] - offset] = v[:, : v.shape[1] - offset] & v[:, offset:]
    return m


def _shift(x: torch.Tensor, offset: int) -> torch.Tensor:
    """x[:, t + offset] at position t (zeros past the end)."""
    out = torch.zeros_like(x)
    if offset < x.shape[1]:
        out[:, : x.shape[1] - offset] = x[:, offset:]
    return out


class GruMotionTask:
    """The ``heads.train_loop.Task`` of this head."""

    # what the console shows per epoch, and select() in words (heads.console)
    key_metrics = {"acc_next_dist": "next_dist", "acc_next_yaw": "next_yaw", "acc_k_dist": "k_dist", "acc_k_yaw": "k_yaw"}
    best_rule = "highest val acc_next_dist + acc_next_yaw, then acc_k_dist + acc_k_yaw, then lowest loss"

    def __init__(self, cfg: GruMotionConfig, train_arrays: dict, val_arrays: dict, n_dist: int, n_yaw: int):
        self.cfg = cfg
        self.offsets = {"next": 1, "k": cfg.k}
        self.train_arrays, self.val_arrays = train_arrays, val_arrays
        self.model = GruMotionModel(n_dist, n_yaw, cfg.emb_dim, cfg.hidden, cfg.layers, cfg.use_deltas, cfg.dropout, cfg.predict_deltas)
        # majority class of each target, from the train split's (t, target) pairs
        self.majority = {}
        for name, off in self.offsets.items():
            m = _pairs(train_arrays["step_valid"], off)
            for kind, n in (("dist", n_dist), ("yaw", n_yaw)):
                tgt = _shift(train_arrays[f"{kind}_bins"], off)[m]
                self.majority[f"{name}_{kind}"] = int(torch.bincount(tgt, minlength=n).argmax()) if tgt.numel() else 0

    def _forward(self, model, b):
        return model(b["deltas"], b["dist_bins"], b["yaw_bins"], b["step_valid"])

    def _losses(self, out, b) -> dict[str, torch.Tensor]:
        losses = {}
        for name, off in self.offsets.items():
            m = _pairs(b["step_valid"], off)
            for kind in ("dist", "yaw"):
                logits = out[f"{name}_{kind}"].float()[m]
                tgt = _shift(b[f"{kind}_bins"], off)[m]
                losses[f"{name}_{kind}"] = global_mean(F.cross_entropy(logits, tgt, ignore_index=IGNORE_INDEX, reduction="none"))
        if "next_delta" in out:
            m = _pairs(b["step_valid"], 1)
            per_pair = F.smooth_l1_loss(out["next_delta"].float()[m], _shift(b["deltas"], 1)[m], reduction="none")  # [n, 3]
            losses["next_delta"] = global_mean(per_pair.mean(-1))
        return losses

    def _total(self, losses):
        c = self.cfg
        total = losses["next_dist"] + losses["next_yaw"] + c.k_loss_weight * (losses["k_dist"] + losses["k_yaw"])
        if "next_delta" in losses:
            total = total + c.delta_loss_weight * losses["next_delta"]
        return total

    def loss(self, model, batch):
        losses = self._losses(self._forward(model, batch), batch)
        return self._total(losses), {f"loss_{k}": float(v.detach()) for k, v in losses.items()}

    def eval_batches(self, split: str, batch_size: int):
        """The split's arrays in stored order, ``batch_size`` episodes a batch (slices, no copy)."""
        arrays = self.train_arrays if split == "train" else self.val_arrays
        n = len(arrays["step_valid"])
        return ({k: v[i : i + batch_size] for k, v in arrays.items()} for i in range(0, n, batch_size))

    @torch.no_grad()
    def evaluate(self, model, arrays) -> dict[str, float]:
        """Metrics on ``arrays``, forwarded ``loop.batch_size`` episodes at a time."""
        n, bs = len(arrays["step_valid"]), self.cfg.loop.batch_size
        return self.evaluate_batches(model, ({k: v[i : i + bs] for k, v in arrays.items()} for i in range(0, n, bs)))

    @torch.no_grad()
    def evaluate_batches(self, model, batches) -> dict[str, float]:
        """Outputs accumulated batch by batch (logits per step are small next to a split's inputs),
        then scored once over every (t, target) pair."""
        dev = next(model.parameters()).device
        outs, inputs = [], []
        for b in batches:
            b = {k: v.to(dev) for k, v in b.items()}
            outs.append(self._forward(model, b))
            inputs.append(b)
        cat = lambda rows: {k: torch.cat([r[k] for r in rows]) for k in rows[0]}  # noqa: E731
        return self._metrics(cat(outs), cat(inputs))

    def _metrics(self, out: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
        losses = self._losses(out, b)
        metrics = {"loss": float(self._total(losses)), **{f"loss_{k}": float(v) for k, v in losses.items()}}
        for name, off in self.offsets.items():
            m = _pairs(b["step_valid"], off)
            metrics[f"n_{name}"] = int(m.sum())
            for kind in ("dist", "yaw"):
                tgt = _shift(b[f"{kind}_bins"], off)[m]
                pred = out[f"{name}_{kind}"].float().argmax(-1)[m]
                last = b[f"{kind}_bins"][m]  # repeat step t's bin
                denom = max(tgt.numel(), 1)
                metrics[f"acc_{name}_{kind}"] = float((pred == tgt).sum()) / denom
                metrics[f"base_majority_{name}_{kind}"] = float((tgt == self.majority[f"{name}_{kind}"]).sum()) / denom
                metrics[f"base_repeat_{name}_{kind}"] = float((last == tgt).sum()) / denom
        return metrics

    def select(self, metrics):
        m = metrics
        return (m["acc_next_dist"] + m["acc_next_yaw"], m["acc_k_dist"] + m["acc_k_yaw"], -m["loss"])


def build_task(cfg: GruMotionConfig) -> tuple[GruMotionTask, dict]:
    train_split, val_split = cfg.splits
    train_arrays, tinfo = load_poses_split(cfg.cache_root, cfg.dataset, train_split)
    val_arrays, vinfo = load_poses_split(cfg.cache_root, cfg.dataset, val_split)
    if (tinfo["dist_edges"], tinfo["yaw_edges"]) != (vinfo["dist_edges"], vinfo["yaw_edges"]):
        raise ValueError(f"{train_split} and {val_split} poses caches were binned with different edges: {tinfo} vs {vinfo}")
    n_dist, n_yaw = len(tinfo["dist_edges"]) + 1, len(tinfo["yaw_edges"]) + 1
    for split, arr in ((train_split, train_arrays), (val_split, val_arrays)):
        for kind, n in (("dist", n_dist), ("yaw", n_yaw)):
            b = arr[f"{kind}_bins"][arr["step_valid"].bool()]  # padded steps hold IGNORE_INDEX
            if b.numel() and (int(b.min()) < 0 or int(b.max()) >= n):
                raise ValueError(f"{split}: {kind}_bins of valid steps outside [0, {n}) of the manifest edges")
    seed_everything(cfg.loop.seed)  # model init depends only on the seed
    task = GruMotionTask(cfg, train_arrays, val_arrays, n_dist, n_yaw)
    info = {"n_dist": n_dist, "n_yaw": n_yaw, "dist_edges": tinfo["dist_edges"], "yaw_edges": tinfo["yaw_edges"],
            "steps": int(train_arrays["step_valid"].shape[1]), "n_train": len(tinfo["episodes"]), "n_val": len(vinfo["episodes"]),
            "train_cache": tinfo["path"], "val_cache": vinfo["path"]}
    return task, info


def train_gru_motion(config: GruMotionConfig | None = None) -> dict:
    """Train, keep the best checkpoint, export its frozen encoder; returns the final metrics.

    With no config: the demo caches under ./navcache_cache (``navcache train gru-motion`` builds them first).
    Returns {"best": {"epoch", "val"}, "last": {"train", "val"}, "export_dir", "out_dir"}.
    """
    cfg = config or GruMotionConfig()
    task, info = build_task(cfg)
    metadata = {"head": "gru-motion", **{k: v for k, v in info.items() if k not in ("train_cache", "val_cache")}, "config": cfg.to_dict()}
    result = run_loop(task, cfg.loop, config_dict={"gru_motion": cfg.to_dict(), "data": info}, metadata=metadata)
    out = Path(cfg.out_dir)
    if result["rank"] == 0:
        load_trainable(task.model, out / "checkpoints" / "best.pt")  # export the best epoch
        export_encoder(task.model.encoder, out / "export", info, best_epoch=result["best"]["epoch"])
    return {**{k: result[k] for k in ("best", "last")}, "export_dir": str(out / "export"), "out_dir": str(out)}
