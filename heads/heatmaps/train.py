"""``navcache train heatmaps``: the heatmaps head on covisibility targets, from caches only.

Loss per pair: cross-entropy of the predicted distribution over the G*G + 5 cells against the soft
target, -sum_c t_c log p_c, plus ``upsample_loss_weight`` times the same against the
convex-upsampled map pooled back per cell (``HeatmapModel.pooled_fine``). Pairs with an all-zero
target (``kept_fraction`` 0) are skipped at load time (``data.load_split``).

Metrics on every split evaluation, for the model and for two baselines scored on the same pairs
(``base_uniform_*``: 1/C everywhere; ``base_mean_*``: the mean train target, "where things usually are"):
    loss         the mean cross-entropy (the model's: the trained total)
    ce, kl       cross-entropy and KL(t || p) = ce - H(t); neg_kl = -kl (the console's higher-is-better)
    top1_hit     the argmax cell holds target mass
    ring_dir     over pairs with out-of-view target mass: the share of the predicted out-of-view
                 mass that lies in the target's dominant out-of-view direction (mean)
Best checkpoint: lowest val KL.
"""
from __future__ import annotations

import math

import torch

from navcache.heads.task import check_same_layout
from navcache.heads.train_loop import global_mean, run_loop, seed_everything

from .configuration import RANDOM_QWEN2, HeatmapsConfig
from .data import N_POSE, PAIR_KEYS, load_split
from .model import N_RING, RANDOM_QWEN2_ARCH, HeatmapModel, load_frozen_llm, make_random_qwen2


def distribution_metrics(logp: torch.Tensor, t: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """ce, kl, top1_hit, ring_dir of log-probabilities ``logp`` [N, C] against targets ``t`` [N, C]."""
    ce = -(t * logp).sum(-1)
    ent = -(t * torch.log(t.clamp_min(1e-12))).sum(-1)
    hit = t.gather(1, logp.argmax(-1, keepdim=True))[:, 0] > 0
    p_ring, t_ring = logp[:, -N_RING:].exp(), t[:, -N_RING:]
    has = t_ring.sum(-1) > 0
    share = p_ring.gather(1, t_ring.argmax(-1, keepdim=True))[:, 0] / p_ring.sum(-1).clamp_min(1e-12)
    kl = float((ce - ent).mean())
    return {f"{prefix}ce": float(ce.mean()), f"{prefix}kl": kl, f"{prefix}neg_kl": -kl, f"{prefix}top1_hit": float(hit.float().mean()),
            f"{prefix}ring_dir": float(share[has].mean()) if has.any() else math.nan}


class HeatmapsTask:
    """The ``heads.train_loop.Task``: arrays are pairs (``a``, ``b`` rows of the keyframe tables, ``target``);
    the tables stay with the task and are gathered per batch, as the model's parameter-free grid
    features of each keyframe (``HeatmapModel.pool``), computed once here rather than for both
    keyframes of every pair at every step."""

    # neg_kl: the console reads every key metric as higher-is-better against its baselines
    key_metrics = {"neg_kl": "-kl", "top1_hit": "top1_hit", "ring_dir": "ring_dir"}
    best_rule = "lowest val kl"

    def __init__(self, cfg: HeatmapsConfig, model: HeatmapModel, train: dict, val: dict):
        self.cfg, self.model = cfg, model
        with torch.no_grad():
            self.tables = {name: model.pool(d["vggt"], d["dino"]) for name, d in (("train", train), ("val", val))}
        # the split is part of each array set, so ``evaluate`` knows which table a pair indexes
        self.train_arrays = {k: train[k] for k in PAIR_KEYS} | {"split": torch.zeros(len(train["a"]), dtype=torch.int64)}
        self.val_arrays = {k: val[k] for k in PAIR_KEYS} | {"split": torch.ones(len(val["a"]), dtype=torch.int64)}
        self.mean_target = train["target"].mean(0)  # [C]: the "where things usually are" baseline

    def _table(self, batch) -> dict[str, torch.Tensor]:
        return self.tables["train" if int(batch["split"][0]) == 0 else "val"]

    def forward(self, model, batch) -> dict[str, torch.Tensor]:
        tab = self._table(batch)
        dev = batch["a"].device
        fa, fb = ({k: v[rows.cpu()].to(dev) for k, v in tab.items()} for rows in (batch["a"], batch["b"]))
        return model(fa, fb, batch["pose"] if self.cfg.camera_cues else None)

    def _losses(self, out, t) -> dict[str, torch.Tensor]:
        net = self.model
        losses = {"ce": -(t * out["logits"].float().log_softmax(-1)).sum(-1)}
        if self.cfg.upsample_loss_weight > 0:
            losses["ce_up"] = -(t * net.pooled_fine(out)).sum(-1)
        return losses

    def loss(self, model, batch):
        losses = self._losses(self.forward(model, batch), batch["target"].float())
        total = global_mean(losses["ce"]) + (self.cfg.upsample_loss_weight * global_mean(losses["ce_up"]) if "ce_up" in losses else 0.0)
        return total, {f"loss_{k}": float(v.detach().mean()) for k, v in losses.items()}

    @torch.no_grad()
    def evaluate(self, model, arrays) -> dict[str, float]:
        dev = next(p for p in model.parameters() if p.requires_grad).device
        logits, ups = [], []
        for i in range(0, len(arrays["a"]), 256):
            b = {k: v[i : i + 256].to(dev) for k, v in arrays.items()}
            out = self.forward(model, b)
            logits.append(out["logits"].float().log_softmax(-1).cpu())
            ups.append(self._losses(out, b["target"].float()).get("ce_up", torch.zeros(len(b["a"]))).cpu())
        return self.metrics(torch.cat(logits), arrays["target"].float(), torch.cat(ups))

    def metrics(self, logp: torch.Tensor, t: torch.Tensor, ce_up: torch.Tensor | None = None) -> dict[str, float]:
        m = distribution_metrics(logp, t)
        m["loss"] = m["ce"] + (self.cfg.upsample_loss_weight * float(ce_up.mean()) if ce_up is not None and len(ce_up) else 0.0)
        if ce_up is not None and self.cfg.upsample_loss_weight > 0:
            m["ce_up"] = float(ce_up.mean())
        n, C = t.shape
        m |= distribution_metrics(torch.full((n, C), -math.log(C)), t, "base_uniform_")
        mean = self.mean_target.clamp_min(1e-6)
        m |= distribution_metrics((mean / mean.sum()).log().expand(n, C), t, "base_mean_")
        m["n"] = n
        return m

    def select(self, metrics):
        return (-metrics["kl"],)


def resolve_llm(cfg: HeatmapsConfig) -> tuple[torch.nn.Module | None, dict | None]:
    """(frozen LLM or None, its provenance for the checkpoint)."""
    if cfg.llm is None:
        return None, None
    if cfg.llm == RANDOM_QWEN2:
        return make_random_qwen2(cfg.llm_seed), {"name": RANDOM_QWEN2, "random_init": True, "seed": cfg.llm_seed, "arch": dict(RANDOM_QWEN2_ARCH)}
    return load_frozen_llm(cfg.llm), {"name": cfg.llm, "random_init": False}


def build_model(md: dict, llm: torch.nn.Module | None) -> HeatmapModel:
    """The model a checkpoint's metadata (or a fresh run's info) describes."""
    c = md["config"]
    return HeatmapModel(int(md["vggt_shape"][-1]), int(md["dino_shape"][-1]), int(md["grid"]), tuple(md["image_size"]), d=int(c["d_model"]),
                        fusion=c["fusion"], heads=int(c["heads"]), dropout=float(c["dropout"]), llm=llm,
                        n_pose=N_POSE if c.get("camera_cues", False) else 0, max_upsample=c.get("max_upsample"))


def build_task(cfg: HeatmapsConfig) -> tuple[HeatmapsTask, dict]:
    train_split, val_split = cfg.splits
    train, tinfo = load_split(cfg.cache_root, cfg.dataset, train_split, cfg.tokens_dataset)
    val, vinfo = load_split(cfg.cache_root, cfg.dataset, val_split, cfg.tokens_dataset)
    check_same_layout(cfg.splits, tinfo, vinfo, ("grid", "image_size", "vggt_shape", "dino_shape"))
    llm, llm_info = resolve_llm(cfg)
    info = {k: tinfo[k] for k in ("grid", "C", "image_size", "vggt_shape", "dino_shape")}
    info |= {"n_train": tinfo["n_pairs"], "n_val": vinfo["n_pairs"], "n_empty": {"train": tinfo["n_empty"], "val": vinfo["n_empty"]},
             "episodes": {"train": len(tinfo["episodes"]), "val": len(vinfo["episodes"])},
             "dropped": {"train": tinfo["dropped"], "val": vinfo["dropped"]}, "llm": llm_info}
    seed_everything(cfg.loop.seed)  # trainable init depends only on the seed
    model = build_model({**info, "config": cfg.to_dict()}, llm)
    task = HeatmapsTask(cfg, model, train, val)
    with torch.no_grad():  # start at the "where things usually are" baseline; learn what a pair adds
        model.prior.copy_(task.mean_target.clamp_min(1e-6).log())
    return task, info


def train_heatmaps(config: HeatmapsConfig | None = None) -> dict:
    """Train; returns {"best": {"epoch", "val"}, "last": {"train", "val"}, "baselines_val", "out_dir"}.

    Checkpoints hold the trainable weights only; ``metadata.llm`` says which frozen LLM (and
    ``random_init``), ``metadata.mean_target`` the baseline, so ``predict`` rebuilds everything."""
    cfg = config or HeatmapsConfig()
    task, info = build_task(cfg)
    metadata = {"head": "heatmaps", **info, "mean_target": task.mean_target.tolist(), "config": cfg.to_dict()}
    result = run_loop(task, cfg.loop, config_dict={"heatmaps": cfg.to_dict(), "data": info}, metadata=metadata)
    base = {k: v for k, v in result["last"]["val"].items() if k.startswith("base_")}
    return {**{k: result[k] for k in ("best", "last")}, "baselines_val": base, "out_dir": str(cfg.out_dir)}
