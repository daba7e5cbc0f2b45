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

import numpy as np
import torch

from navcache.heads.train_loop import run_loop, seed_everything

from .configuration import FlowExpertConfig
from .data import Normaliser, load_norm_stats, load_split
from .flow import euler_sample, interpolate, masked_mse, sample_time, valid_mask
from .model import FlowExpert
from .stream import choose_mode, stream_split


def build_model(cfg: FlowExpertConfig, context_dim: int) -> FlowExpert:
    return FlowExpert(context_dim, cfg.max_action_dim, cfg.horizon, width=cfg.width, depth=cfg.depth, mlp_dim=cfg.mlp_dim,
                      num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                      connector_hidden=cfg.connector_hidden, time_conditioning=cfg.time_conditioning)


def _expert(model) -> FlowExpert:
    """The FlowExpert inside a DDP wrapper or a perception-fronted policy."""
    m = getattr(model, "module", model)
    return getattr(m, "expert", m)


@torch.no_grad()
def sample_normalised(model: FlowExpert, context, state, generator: torch.Generator | None = None, num_steps: int = 10):
    """Chunks [B, H, A'] in normalised units: Euler from seeded noise, the prefix run once."""
    noise = torch.randn(state.shape[0], model.horizon, model.action_dim, generator=generator, device="cpu").to(state.device)
    cache = model.prefix_cache(context, state)
    return euler_sample(lambda x, t: model.suffix_velocity(cache, state, x, t), noise, num_steps).float()


class FlowExpertTask:
    """The ``heads.train_loop.Task`` of this head, splits in memory (``StreamingFlowExpertTask``: streamed)."""

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
        loss = self.flow_loss(model, batch["context"].float(), batch)  # streamed context arrives as cached (fp16)
        return loss, {}

    @torch.no_grad()
    def evaluate(self, model, arrays) -> dict[str, float]:
        """Metrics on a split in memory, ``max(loop.batch_size, 256)`` samples a batch."""
        bs, n = max(self.cfg.loop.batch_size, 256), len(arrays["state"])
        return self.score(model, ({k: v[i:i + bs] for k, v in arrays.items()} for i in range(0, n, bs)))

    @torch.no_grad()
    def score(self, model, batches) -> dict[str, float]:
        """Flow loss and sampled-chunk MSE vs both baselines, accumulated over ``batches``; the
        noise of every batch comes from one generator seeded with ``eval_seed``."""
        dev = next(p for p in model.parameters() if p.requires_grad).device
        gen = torch.Generator().manual_seed(self.cfg.eval_seed)
        sq = sq_mean = sq_rep = loss = 0.0
        count = n = 0
        for b in batches:
            b = {k: v.to(dev) for k, v in b.items() if torch.is_tensor(v)}
            context = b["context"].float()
            loss += float(self.flow_loss(model, context, b, gen)) * len(b["state"])
            pred = self.actions_norm.unnormalise(sample_normalised(_expert(model), context, b["state"], gen, self.cfg.num_steps)[..., :self.action_dim])
            s = score_chunks(pred, b["actions_raw"], b["is_pad"], b["prev_action"], self.mean_action.to(dev))
            sq, sq_mean, sq_rep, count = sq + s["sq"], sq_mean + s["sq_mean"], sq_rep + s["sq_repeat"], count + s["count"]
            n += len(b["state"])
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


class StreamingFlowExpertTask(FlowExpertTask):
    """The same task over splits read through the streaming loader (``heads.task.StreamingTask``):
    training batches from ``stream.stream_split``; evaluation from an unshuffled loader of each
    split (opened once per run), scored by the same ``score``."""

    def __init__(self, cfg: FlowExpertConfig, model: FlowExpert, stats: dict, action_dim: int, mean_action: torch.Tensor,
                 loader_mode: str, eval_sources: dict | None = None):
        self.cfg, self.model, self.stats, self.action_dim, self.loader_mode = cfg, model, stats, action_dim, loader_mode
        self.actions_norm = Normaliser(cfg.normalization, stats["actions"])
        self.mean_action = mean_action
        self._eval = dict(eval_sources or {})  # {(split, batch_size): FlowBatches}

    def _source(self, split: str, **kw):
        return stream_split(self.cfg, split, self.stats, loader_mode=self.loader_mode, **kw)

    def train_batches(self, batch_size: int, seed: int, rank: int, world: int):
        return self._source(self.cfg.splits[0], batch_size=batch_size, seed=seed, rank=rank, world=world)

    def eval_batches(self, split: str, batch_size: int):
        name = self.cfg.splits[0] if split == "train" else self.cfg.splits[1]
        if (name, batch_size) not in self._eval:
            self._eval[name, batch_size] = self._source(name, batch_size=batch_size, shuffle=False)
        return iter(self._eval[name, batch_size])

    def evaluate_batches(self, model, batches) -> dict[str, float]:
        return self.score(model, batches)


def build_task(cfg: FlowExpertConfig) -> tuple[FlowExpertTask, dict]:
    """The task in memory or streaming (``cfg.data_mode``; "auto" streams when the splits exceed the budget)."""
    stats = load_norm_stats(cfg)
    mode = choose_mode(cfg)
    if mode == "memory":
        train_arrays, tinfo = load_split(cfg, cfg.splits[0], stats)
        val_arrays, vinfo = load_split(cfg, cfg.splits[1], stats)
    else:
        tinfo, vinfo, sources = _stream_info(cfg, stats)
    if (tinfo["context_tokens"], tinfo["context_dim"]) != (vinfo["context_tokens"], vinfo["context_dim"]):
        raise ValueError(f"{cfg.splits[0]} and {cfg.splits[1]} context tokens differ: {tinfo['context_tokens']}x{tinfo['context_dim']} "
                         f"vs {vinfo['context_tokens']}x{vinfo['context_dim']}")
    seed_everything(cfg.loop.seed)  # init depends only on the seed
    model = build_model(cfg, tinfo["context_dim"])
    if mode == "memory":
        task = FlowExpertTask(cfg, model, train_arrays, val_arrays, stats, tinfo["action_dim"])
    else:
        # "stream" forces reads from disk every epoch (as sim-heads does); "auto" lets the loader hold what fits
        task = StreamingFlowExpertTask(cfg, model, stats, tinfo["action_dim"], tinfo["mean_action"], "stream" if cfg.data_mode == "stream" else "auto",
                                       sources)
    info = {"context_dim": tinfo["context_dim"], "context_tokens": tinfo["context_tokens"], "state_dim": tinfo["state_dim"],
            "action_dim": tinfo["action_dim"], "n_train": tinfo["n"], "n_val": vinfo["n"], "data_mode": mode,
            "dropped": {"train": tinfo["dropped"], "val": vinfo["dropped"]}, "norm_stats": stats,
            "mean_action": task.mean_action.tolist()}
    return task, info


def _stream_info(cfg: FlowExpertConfig, stats: dict) -> tuple[dict, dict, dict]:
    """(train info, val info, evaluation sources) of the streaming path: shapes from one batch,
    counts from the loaders, the train mean action from robot_meta's rows that have context."""
    bs = cfg.loop.batch_size
    sources = {s: stream_split(cfg, s, stats, batch_size=bs, shuffle=False, loader_mode="stream" if cfg.data_mode == "stream" else "auto")
               for s in cfg.splits}
    infos = []
    for s, src in sources.items():
        b = next(iter(src))
        t = src.table
        rows = np.concatenate([t.ctx_rows[e] for e in src.episodes])
        infos.append({"n": src.n_samples, "dropped": len(t.frame_index) - src.n_samples, "context_tokens": int(b["context"].shape[1]),
                      "context_dim": int(b["context"].shape[2]), "state_dim": t.state_dim, "action_dim": t.action_dim,
                      "mean_action": torch.from_numpy(t.actions_raw[rows]).mean(0)})
    return infos[0], infos[1], {(s, bs): src for s, src in sources.items()}


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
