"""``navcache train flow-expert``: the connector MLP + action expert by flow matching, from caches.

Each step: t ~ Beta(1.5, 1) * 0.999 + 0.001, noise ~ N(0, I), x_t = t * noise + (1 - t) * actions,
the model predicts v from (context, state, x_t, t), loss = MSE(v, noise - actions) over valid steps
and unpadded dims (``flow.py``). Two parameter groups: the connector at ``connector_lr``, the expert
at ``expert_lr`` (both follow ``loop.schedule``); the frozen perception is a cache, never a parameter.

Evaluation samples chunks (``num_steps`` Euler steps from seeded noise), unnormalises them and
scores MSE in the dataset's units over valid steps against two baselines on the same steps: the
train split's mean action, and repeating the previous frame's action (the train mean on an
episode's first frame, which has none). Best checkpoint: lowest val ``mse``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from navcache.heads.train_loop import run_loop, seed_everything

from .configuration import FlowExpertConfig
from .data import Normaliser, load_norm_stats, load_split
from .flow import euler_sample, interpolate, masked_mse, sample_time, valid_mask
from .model import FlowExpert


def build_model(cfg: FlowExpertConfig, context_dim: int) -> FlowExpert:
    return FlowExpert(context_dim, cfg.max_action_dim, cfg.horizon, width=cfg.width, depth=cfg.depth, mlp_dim=cfg.mlp_dim,
                      num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                      connector_hidden=cfg.connector_hidden)


def _expert(model) -> FlowExpert:
    """The FlowExpert inside a DDP wrapper or a perception-fronted policy."""
    m = getattr(model, "module", model)
    return getattr(m, "expert", m)


@torch.no_grad()
def sample_normalised(model: FlowExpert, context, state, generator: torch.Generator | None = None, num_steps: int = 10):
    """Chunks [B, H, A'] in normalised units: Euler from seeded noise, the prefix run once."""
    noise = torch.randn(state.shape[0], model.horizon, model.action_dim, generator=generator, device="cpu").to(state.device)
    cache = model.prefix_cache(context)
    return euler_sample(lambda x, t: model.suffix_velocity(cache, state, x, t), noise, num_steps).float()


class FlowExpertTask:
    """The ``heads.train_loop.Task`` of this head (splits in memory)."""

    key_metrics = {"mse": "mse", "baseline_mean_mse": "mean-action mse", "baseline_repeat_mse": "repeat-last mse"}
    best_rule = "lowest val mse (sampled chunks, unnormalised)"

    def __init__(self, cfg: FlowExpertConfig, model: FlowExpert, train_arrays: dict, val_arrays: dict, stats: dict, action_dim: int):
        self.cfg, self.model, self.action_dim = cfg, model, action_dim
        self.train_arrays, self.val_arrays = train_arrays, val_arrays
        self.actions_norm = Normaliser(cfg.normalization, stats["actions"])
        raw = train_arrays["actions_raw"][:, 0]  # each frame's own action
        self.mean_action = raw.mean(0)  # [A]

    def param_groups(self, model) -> list[dict]:
        """Connector at connector_lr, the rest of the expert at expert_lr (trainable parameters only)."""
        m = _expert(model)
        return [{"params": [p for p in m.connector_parameters() if p.requires_grad], "lr": self.cfg.connector_lr},
                {"params": [p for p in m.expert_parameters() if p.requires_grad], "lr": self.cfg.expert_lr}]

    def flow_loss(self, model, context, batch, generator=None) -> torch.Tensor:
        actions = batch["actions"]
        noise = torch.randn(actions.shape, generator=generator, device="cpu").to(actions.device)
        t = sample_time(actions.shape[0], generator).to(actions.device)
        x_t, u_t = interpolate(actions, noise, t)
        v = model(context, batch["state"], x_t, t)
        return masked_mse(v, u_t, valid_mask(batch["is_pad"], self.action_dim, actions.shape[-1]))

    def loss(self, model, batch):
        loss = self.flow_loss(model, batch["context"], batch)
        return loss, {}

    @torch.no_grad()
    def evaluate(self, model, arrays) -> dict[str, float]:
        dev = next(p for p in model.parameters() if p.requires_grad).device
        gen = torch.Generator().manual_seed(self.cfg.eval_seed)
        sq = sq_mean = sq_rep = loss = 0.0
        count, n = 0, len(arrays["state"])
        bs = max(self.cfg.loop.batch_size, 256)
        for i in range(0, n, bs):
            b = {k: v[i:i + bs].to(dev) for k, v in arrays.items()}
            loss += float(self.flow_loss(model, b["context"], b, gen)) * len(b["state"])
            pred = self.actions_norm.unnormalise(sample_normalised(_expert(model), b["context"], b["state"], gen, self.cfg.num_steps)[..., :self.action_dim])
            s = score_chunks(pred, b["actions_raw"], b["is_pad"], b["prev_action"], self.mean_action.to(dev))
            sq, sq_mean, sq_rep, count = sq + s["sq"], sq_mean + s["sq_mean"], sq_rep + s["sq_repeat"], count + s["count"]
        c = max(count, 1)
        return {"loss": loss / max(n, 1), "mse": sq / c, "baseline_mean_mse": sq_mean / c, "baseline_repeat_mse": sq_rep / c,
                "n": n, "n_values": count}

    def select(self, metrics):
        return (-metrics["mse"],)


def score_chunks(pred, target, is_pad, prev_action, mean_action) -> dict:
    """Sums of squared errors over valid steps and dims, in raw units: pred, target [B, H, A],
    is_pad [B, H], prev_action [B, A] (NaN: none; the mean then), mean_action [A]."""
    valid = (~is_pad)[..., None].float()
    prev = torch.where(torch.isnan(prev_action), mean_action.expand_as(prev_action), prev_action)
    err = lambda p: float(((p - target).square() * valid).sum())  # noqa: E731
    return {"sq": err(pred), "sq_mean": err(mean_action.expand_as(target)), "sq_repeat": err(prev[:, None, :].expand_as(target)),
            "count": int(valid.sum()) * target.shape[-1]}


def build_task(cfg: FlowExpertConfig) -> tuple[FlowExpertTask, dict]:
    stats = load_norm_stats(cfg)
    train_arrays, tinfo = load_split(cfg, cfg.splits[0], stats)
    val_arrays, vinfo = load_split(cfg, cfg.splits[1], stats)
    if (tinfo["context_tokens"], tinfo["context_dim"]) != (vinfo["context_tokens"], vinfo["context_dim"]):
        raise ValueError(f"{cfg.splits[0]} and {cfg.splits[1]} context tokens differ: {tinfo['context_tokens']}x{tinfo['context_dim']} "
                         f"vs {vinfo['context_tokens']}x{vinfo['context_dim']}")
    seed_everything(cfg.loop.seed)  # init depends only on the seed
    model = build_model(cfg, tinfo["context_dim"])
    task = FlowExpertTask(cfg, model, train_arrays, val_arrays, stats, tinfo["action_dim"])
    info = {"context_dim": tinfo["context_dim"], "context_tokens": tinfo["context_tokens"], "state_dim": tinfo["state_dim"],
            "action_dim": tinfo["action_dim"], "n_train": tinfo["n"], "n_val": vinfo["n"],
            "dropped": {"train": tinfo["dropped"], "val": vinfo["dropped"]}, "norm_stats": stats,
            "mean_action": task.mean_action.tolist()}
    return task, info


def train_flow_expert(config: FlowExpertConfig | None = None) -> dict:
    """Train; rank 0 exports best.pt to ``<out_dir>/export`` (model.safetensors + config.json + norm_stats.json).

    Returns {"best", "last", "out_dir", "export_dir"}.
    """
    from .export import export_checkpoint

    cfg = config or FlowExpertConfig()
    task, info = build_task(cfg)
    metadata = {"head": "flow-expert", **info, "config": cfg.to_dict()}
    result = run_loop(task, cfg.loop, config_dict={"flow_expert": cfg.to_dict(), "data": {k: v for k, v in info.items() if k != "norm_stats"}},
                      metadata=metadata)
    out = Path(cfg.out_dir)
    if result["rank"] == 0:
        export_checkpoint(out / "checkpoints" / "best.pt", out / "export")
    return {**{k: result[k] for k in ("best", "last")}, "out_dir": str(out), "export_dir": str(out / "export")}
