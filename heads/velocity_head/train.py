"""``navcache train velocity-head``: OpenVLA's 2-D action (v_x, v_y) from cached patch features and the goal point.

Targets are q99-normalised with the TRAIN split's ``dataset_statistics.json`` numbers (OpenVLA's
BOUNDS_Q99: [q01, q99] -> [-1, 1], clipped). Loss = L1 (or MSE) on the normalised action, plus
``chunk_loss_weight`` x the same on every valid step of v [H, 2] with ``chunk``, plus
``token_loss_weight`` x CE over OpenVLA's 256 bins of each dimension.

Metrics on every split evaluation, in raw units (unnormalised, against the unclipped action):
    l2                    mean L2 error of the predicted action
    mean_l2               baseline: the train split's mean action for every sample
    median_l2             baseline: the train split's per-dimension median action (an L1 loss's constant)
    goal_l2               baseline, straight to the goal: the goal pixel back-projected to the ground
                          plane, as a direction, at the train split's mean speed (mean |action|)
    goal_even_l2          baseline, straight to the goal evenly: the back-projected goal divided by the
                          sample's number of path steps (the constant velocity that ends at the goal)
    token_accuracy        fraction of dimensions whose OpenVLA token (256 bins) is right: from the token
                          logits when the head has them, else from the regressed action (what OpenVLA logs)
    base_mean_token_accuracy  the mean action's tokens
The back-projection is the ground-plane homography (pixel -> path end) fitted by least squares
(``cv2.findHomography``) on the TRAIN split's (goal pixel, sum of the path's valid steps) pairs: for a
pinhole camera over a flat floor it is exactly the camera's back-projection, it needs no camera
parameters in the caches, and its train residual is reported (``goal_fit_residual``). It assumes the
goal is the path's last point, as in VAMOS's ``lang_goal``. Lower l2 is better; the best checkpoint
is the lowest val l2.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from navcache.heads.exports.openvla_stats import action_to_bins, normalize_q99, openvla_statistics
from navcache.heads.task import check_same_layout
from navcache.heads.train_loop import global_mean, load_trainable, run_loop, seed_everything

from .configuration import VelocityHeadConfig
from .data import load_split
from .export import export_head
from .model import VelocityHead

EVAL_BATCH = 1024


def fit_goal_homography(goal: np.ndarray, v: np.ndarray, v_valid: np.ndarray) -> tuple[np.ndarray, float]:
    """(3x3 homography goal pixel -> path end in velocity units, mean L2 residual on the fit pairs).
    goal [N, 2] pixels, v [N, H, 2], v_valid [N, H]."""
    import cv2

    end = (v * v_valid[..., None]).sum(1)
    Hm, _ = cv2.findHomography(goal.astype(np.float64), end.astype(np.float64), 0)
    if Hm is None:
        raise ValueError("the goal points do not determine a ground-plane homography (fewer than 4, or collinear)")
    return Hm, float(np.linalg.norm(back_project(Hm, goal) - end, axis=1).mean())


def back_project(Hm: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """goal [N, 2] pixels -> [N, 2] ground points through the homography."""
    q = np.c_[goal, np.ones(len(goal))] @ np.asarray(Hm).T
    return q[:, :2] / q[:, 2:3]


def goal_baselines(ref: dict, goal: np.ndarray, steps: np.ndarray) -> dict[str, np.ndarray]:
    """{"goal": [N, 2], "goal_even": [N, 2]} straight-to-goal actions (see the module docstring)."""
    g = back_project(ref["homography"], goal)
    unit = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-9)
    return {"goal": unit * ref["mean_speed"], "goal_even": g / np.maximum(steps, 1)[:, None]}


class VelocityTask:
    """The ``heads.train_loop.Task`` of the velocity head (splits in memory)."""

    key_metrics = {"l2": "l2", "mean_l2": "mean", "median_l2": "median", "goal_l2": "goal", "goal_even_l2": "goal_even", "token_accuracy": "tokens"}
    best_rule = "lowest val l2"

    def __init__(self, cfg: VelocityHeadConfig, model: VelocityHead, ref: dict, train_arrays: dict, val_arrays: dict):
        self.cfg, self.model, self.ref = cfg, model, ref
        self.train_arrays, self.val_arrays = train_arrays, val_arrays

    def _reg(self, pred, tgt):
        return (pred - tgt).abs() if self.cfg.loss == "l1" else (pred - tgt) ** 2

    def _losses(self, out, b) -> dict[str, torch.Tensor]:
        losses = {"action": global_mean(self._reg(out["action"].float(), b["target"]).mean(-1))}
        if "chunk" in out:
            m = b["v_valid"].float()
            per = (self._reg(out["chunk"].float(), b["chunk_target"]).mean(-1) * m).sum(1) / m.sum(1).clamp(min=1)
            losses["chunk"] = global_mean(per)
        if "token_logits" in out:
            ce = F.cross_entropy(out["token_logits"].float().flatten(0, 1), b["bins"].flatten(), reduction="none").view(-1, 2).mean(-1)
            losses["tokens"] = global_mean(ce)
        return losses

    def _total(self, losses):
        c = self.cfg
        return losses["action"] + c.chunk_loss_weight * losses.get("chunk", 0.0) + c.token_loss_weight * losses.get("tokens", 0.0)

    def loss(self, model, batch):
        losses = self._losses(model(batch["patches"], batch["goal_n"]), batch)
        return self._total(losses), {f"loss_{k}": float(v.detach()) for k, v in losses.items()}

    @torch.no_grad()
    def outputs(self, model, arrays) -> dict[str, torch.Tensor]:
        """The model's outputs over a whole split, in batches of EVAL_BATCH (on CPU)."""
        dev = next(model.parameters()).device
        outs: dict[str, list] = {}
        for i in range(0, len(arrays["goal_n"]), EVAL_BATCH):
            o = model(arrays["patches"][i : i + EVAL_BATCH].to(dev), arrays["goal_n"][i : i + EVAL_BATCH].to(dev))
            for k, v in o.items():
                outs.setdefault(k, []).append(v.float().cpu())
        return {k: torch.cat(v) for k, v in outs.items()}

    @torch.no_grad()
    def evaluate(self, model, arrays) -> dict[str, float]:
        out = self.outputs(model, arrays)
        losses = self._losses(out, arrays)
        m: dict[str, float] = {"loss": float(self._total(losses)), **{f"loss_{k}": float(v) for k, v in losses.items()}, "n": len(arrays["goal"])}
        return {**m, **score(self.ref, out, arrays)}

    def select(self, metrics):
        return (-metrics["l2"],)


def unnormalise(ref: dict, a) -> np.ndarray:
    """Normalised actions [..., 2] (clamped to [-1, 1]) -> raw units, with the train split's q01/q99."""
    from navcache.heads.exports.openvla_stats import unnormalize_q99

    return unnormalize_q99(np.clip(np.asarray(a, np.float64), -1, 1), ref["action_stats"])


BASELINES = ("mean", "median", "goal", "goal_even")


def score(ref: dict, out: dict[str, torch.Tensor], arrays: dict[str, torch.Tensor]) -> dict[str, float]:
    """l2, the baselines' l2 and the token accuracies of a split (see the module docstring)."""
    action = arrays["action"].double().numpy()
    pred = unnormalise(ref, out["action"].numpy())
    l2 = lambda p: float(np.linalg.norm(p - action, axis=1).mean())  # noqa: E731
    steps = arrays["v_valid"].numpy().sum(1)
    base = {"mean": np.broadcast_to(np.asarray(ref["mean_action"]), action.shape),
            "median": np.broadcast_to(np.asarray(ref["median_action"]), action.shape), **goal_baselines(ref, arrays["goal"].double().numpy(), steps)}
    bins = arrays["bins"].numpy()
    pred_bins = out["token_logits"].argmax(-1).numpy() if "token_logits" in out else action_to_bins(np.clip(out["action"].numpy(), -1, 1))
    mean_bins = action_to_bins(normalize_q99(base["mean"], ref["action_stats"]))
    m = {"l2": l2(pred), **{f"{k}_l2": l2(p) for k, p in base.items()},
         "token_accuracy": float((pred_bins == bins).mean()), "base_mean_token_accuracy": float((mean_bins == bins).mean())}
    if "chunk" in out:
        valid = arrays["v_valid"].numpy()
        err = np.linalg.norm(unnormalise(ref, out["chunk"].numpy()) - arrays["v"].double().numpy(), axis=-1)
        m["chunk_l2"] = float(err[valid].mean())
    return m


def reference(train: dict[str, torch.Tensor], stats: dict) -> dict:
    """What normalises inputs and targets and defines the baselines, from the TRAIN split only."""
    goal, action = train["goal"].double().numpy(), train["action"].double().numpy()
    Hm, resid = fit_goal_homography(goal, train["v"].double().numpy(), train["v_valid"].numpy())
    return {"action_stats": stats, "goal_mean": goal.mean(0).tolist(), "goal_std": np.maximum(goal.std(0), 1e-6).tolist(),
            "mean_action": action.mean(0).tolist(), "median_action": np.median(action, 0).tolist(), "mean_speed": float(np.linalg.norm(action, axis=1).mean()),
            "homography": Hm.tolist(), "goal_fit_residual": resid}


def model_inputs(ref: dict, arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The cached arrays plus what the model and losses read: goal_n [N, 2], target [N, 2], chunk_target [N, H, 2], bins [N, 2]."""
    st = ref["action_stats"]
    goal_n = (arrays["goal"].double() - torch.tensor(ref["goal_mean"])) / torch.tensor(ref["goal_std"])
    target = normalize_q99(arrays["action"].numpy(), st)
    chunk = normalize_q99(arrays["v"].numpy(), st)
    return {**arrays, "goal_n": goal_n.float(), "target": torch.from_numpy(target).float(),
            "chunk_target": torch.from_numpy(chunk).float(), "bins": torch.from_numpy(action_to_bins(target))}


def build_model(cfg: VelocityHeadConfig | dict, D: int, P: int, H: int) -> VelocityHead:
    c = cfg if isinstance(cfg, dict) else cfg.to_dict()
    return VelocityHead(D, P, H, c["hidden"], c["heads"], c["dropout"], c["use_image"], c["chunk"], c["token_loss_weight"] > 0)


def build_task(cfg: VelocityHeadConfig) -> tuple[VelocityTask, dict]:
    tr, va = cfg.splits
    train, tinfo = load_split(cfg.cache_root, cfg.dataset, tr, cfg.features)
    val, vinfo = load_split(cfg.cache_root, cfg.dataset, va, cfg.features)
    check_same_layout(cfg.splits, tinfo, vinfo, ("kind", "P", "D", "H"))
    stats = openvla_statistics(Path(tinfo["path"]))
    ref = reference(train, next(iter(stats.values()))["action"])
    seed_everything(cfg.loop.seed)  # model init depends only on the seed
    model = build_model(cfg, tinfo["D"], tinfo["P"], tinfo["H"])
    task = VelocityTask(cfg, model, ref, model_inputs(ref, train), model_inputs(ref, val))
    info = {**{k: tinfo[k] for k in ("kind", "F", "P", "D", "H", "dt")}, "n_train": tinfo["n"], "n_val": vinfo["n"],
            "train_cache": tinfo["path"], "val_cache": vinfo["path"], "dropped": {tr: tinfo["dropped"], va: vinfo["dropped"]}}
    return task, info


def train_velocity_head(config: VelocityHeadConfig | None = None) -> dict:
    """Train, keep the best (lowest val l2) checkpoint, export it; returns the final metrics.

    Returns {"best": {"epoch", "val"}, "last": {"train", "val"}, "export_dir", "out_dir", "reference"}.
    """
    cfg = config or VelocityHeadConfig()
    task, info = build_task(cfg)
    metadata = {"head": "velocity-head", **{k: v for k, v in info.items() if k not in ("train_cache", "val_cache", "dropped")},
                "reference": task.ref, "config": cfg.to_dict()}
    result = run_loop(task, cfg.loop, config_dict={"velocity_head": cfg.to_dict(), "data": info}, metadata=metadata)
    out = Path(cfg.out_dir)
    if result["rank"] == 0:
        load_trainable(task.model, out / "checkpoints" / "best.pt")  # export the best epoch
        export_head(task.model, out / "export", metadata, Path(info["train_cache"]), best_epoch=result["best"]["epoch"])
    return {**{k: result[k] for k in ("best", "last")}, "export_dir": str(out / "export"), "out_dir": str(out),
            "reference": {k: task.ref[k] for k in ("mean_action", "mean_speed", "goal_fit_residual")}}
