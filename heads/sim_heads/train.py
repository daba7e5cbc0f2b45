"""``train_sim_heads``: SIM v0 heads (risk / reason / action) on a frozen LLM, from rover frame_features + rover_meta caches.

Loss = sum_h loss_weights[h] * CE_h, each CE a weighted mean over the batch with the clips' ``weight``
(plain mean with ``use_sample_weights: false``). Default weights: risk 1, reason 0.5, action 1.
Metrics on every split evaluation: risk_high_recall / risk_high_fn_rate, per-head accuracy and macro-F1,
macro_f1 = mean(risk macro-F1, action macro-F1), losses, and majority-class baselines (the train split's
most frequent class of each head) scored on the same split. Macro-F1 averages the classes present in the
labels or the predictions (sklearn's convention). Best checkpoint: max (risk_high_recall, macro_f1).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from navcache.cache_specs.labels import LABELS, RISK
from navcache.heads.train_loop import global_mean, is_master, run_loop, seed_everything

from .configuration import HEAD_NAMES, SimHeadsConfig
from .data import choose_mode, load_split, normalise_telemetry, stream_split
from .export import LABELS_FILE, export_checkpoint
from .model import N_CLASSES, RANDOM_GPT2, SimV0Model, load_frozen_llm, make_random_gpt2

HIGH = RISK.index("high")


def macro_f1(pred: torch.Tensor, tgt: torch.Tensor, n: int) -> float:
    """Mean F1 over the classes that occur in ``tgt`` or ``pred``."""
    f1s = []
    for c in range(n):
        tp = int(((pred == c) & (tgt == c)).sum())
        n_pred, n_true = int((pred == c).sum()), int((tgt == c).sum())
        if n_pred == 0 and n_true == 0:
            continue
        f1s.append(2 * tp / (n_pred + n_true))
    return sum(f1s) / len(f1s) if f1s else 0.0


class SimHeadsTask:
    """The ``heads.train_loop.Task`` of the SIM heads, in memory (``train_arrays`` / ``val_arrays``)."""

    # what the console shows per epoch, and select() in words (heads.console)
    key_metrics = {"risk_accuracy": "risk", "reason_accuracy": "reason", "action_accuracy": "action",
                   "risk_high_recall": "risk_high_recall", "macro_f1": "macro_f1"}
    best_rule = "highest val risk_high_recall, then macro_f1"

    def __init__(self, cfg: SimHeadsConfig, model: SimV0Model, train_arrays: dict, val_arrays: dict):
        self.cfg, self.model = cfg, model
        self.train_arrays, self.val_arrays = train_arrays, val_arrays
        self.majority = {h: int(torch.bincount(train_arrays[h], minlength=N_CLASSES[h]).argmax()) for h in HEAD_NAMES}

    def _losses(self, out, b) -> dict[str, torch.Tensor]:
        w = b["weight"].float() if self.cfg.use_sample_weights else None
        return {h: global_mean(F.cross_entropy(out[h].float(), b[h], reduction="none"), w) for h in HEAD_NAMES}

    def _total(self, losses):
        return sum(self.cfg.loss_weights[h] * losses[h] for h in HEAD_NAMES)

    def loss(self, model, batch):
        losses = self._losses(model(batch["vis_feats"], batch["telemetry"]), batch)
        return self._total(losses), {f"loss_{h}": float(v.detach()) for h, v in losses.items()}

    def eval_batches(self, split: str, batch_size: int):
        """The split's arrays in stored order, ``batch_size`` clips a batch (slices, no copy)."""
        arrays = self.train_arrays if split == "train" else self.val_arrays
        n = len(arrays["risk"])
        return ({k: v[i : i + batch_size] for k, v in arrays.items()} for i in range(0, n, batch_size))

    @torch.no_grad()
    def evaluate(self, model, arrays) -> dict[str, float]:
        """Metrics on ``arrays``, forwarded ``loop.batch_size`` clips at a time (never a whole split at once)."""
        n, bs = len(arrays["risk"]), self.cfg.loop.batch_size
        return self.evaluate_batches(model, ({k: v[i : i + bs] for k, v in arrays.items()} for i in range(0, n, bs)))

    @torch.no_grad()
    def evaluate_batches(self, model, batches) -> dict[str, float]:
        """Logits accumulated batch by batch (a split's logits are small even when its features are
        not), scored with ``metrics``."""
        dev = next(p for p in model.parameters() if p.requires_grad).device
        outs, labels = [], []
        for b in batches:
            b = {k: v.to(dev) for k, v in b.items() if torch.is_tensor(v)}
            out = model(b["vis_feats"], b["telemetry"])
            outs.append({h: out[h].float() for h in HEAD_NAMES})
            labels.append({k: b[k] for k in (*HEAD_NAMES, "weight")})
        cat = lambda rows: {k: torch.cat([r[k] for r in rows]) for k in rows[0]}  # noqa: E731
        return self.metrics(cat(outs), cat(labels))

    def metrics(self, out: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
        """Every split metric from the logits ``out[h]`` [N, C_h] of a whole split and its labels ``b``."""
        losses = self._losses(out, b)
        m: dict[str, float] = {"loss": float(self._total(losses)), **{f"loss_{h}": float(v) for h, v in losses.items()}, "n": len(b["risk"])}
        for h in HEAD_NAMES:
            pred, tgt = out[h].float().argmax(-1), b[h]
            base = torch.full_like(tgt, self.majority[h])
            m[f"{h}_accuracy"] = float((pred == tgt).float().mean())
            m[f"{h}_f1_macro"] = macro_f1(pred, tgt, N_CLASSES[h])
            m[f"base_majority_{h}_accuracy"] = float((base == tgt).float().mean())
            m[f"base_majority_{h}_f1_macro"] = macro_f1(base, tgt, N_CLASSES[h])
        risk_pred = out["risk"].float().argmax(-1)
        is_high = b["risk"] == HIGH
        m["n_risk_high"] = int(is_high.sum())
        m["risk_high_recall"] = float((risk_pred[is_high] == HIGH).float().mean()) if is_high.any() else 0.0
        m["risk_high_fn_rate"] = 1.0 - m["risk_high_recall"] if is_high.any() else 0.0
        m["macro_f1"] = (m["risk_f1_macro"] + m["action_f1_macro"]) / 2
        m["base_majority_macro_f1"] = (m["base_majority_risk_f1_macro"] + m["base_majority_action_f1_macro"]) / 2
        return m

    def select(self, metrics):
        return (metrics["risk_high_recall"], metrics["macro_f1"])


class StreamingSimHeadsTask(SimHeadsTask):
    """The same task over splits read from disk block by block (``heads.train_loop.StreamingTask``):
    training batches from ``stream_split``; evaluation batches from the same loader, unshuffled,
    through the same ``evaluate_batches``."""

    def __init__(self, cfg: SimHeadsConfig, model: SimV0Model, stats: dict, majority: dict[str, int], eval_loaders: dict | None = None):
        self.cfg, self.model, self.stats, self.majority = cfg, model, stats, majority
        # {(split, batch_size): loader}: evaluation reads the same unshuffled loader every time, so
        # the caches are opened and joined once per run, not once per evaluation
        self._eval = dict(eval_loaders or {})

    def _loader(self, split: str, **kw):
        c = self.cfg
        return stream_split(c.cache_root, c.dataset, split, self.stats, mode="stream", memory_budget=c.memory_budget_mb << 20,
                            num_workers=c.num_workers, shuffle_buffer=c.shuffle_buffer, **kw)

    def train_batches(self, batch_size: int, seed: int, rank: int, world: int):
        return self._loader(self.cfg.splits[0], batch_size=batch_size, seed=seed, rank=rank, world=world)

    def eval_batches(self, split: str, batch_size: int):
        name = self.cfg.splits[0] if split == "train" else self.cfg.splits[1]
        if (name, batch_size) not in self._eval:
            self._eval[name, batch_size] = self._loader(name, batch_size=batch_size, shuffle=False)
        return iter(self._eval[name, batch_size])


def resolve_llm(cfg: SimHeadsConfig) -> tuple[Path, dict]:
    if cfg.llm is None:
        path = make_random_gpt2(Path(cfg.out_dir) / "frozen_llm", seed=cfg.llm_seed)
        return path, {"path": str(path), "random_init": True, "seed": cfg.llm_seed, "arch": "gpt2", **RANDOM_GPT2}
    return Path(cfg.llm), {"path": cfg.llm, "random_init": False}


def build_task(cfg: SimHeadsConfig) -> tuple[SimHeadsTask, dict]:
    """The task in memory or streaming (``cfg.data_mode``; "auto" streams when the splits exceed the budget)."""
    mode = choose_mode(cfg.data_mode, cfg.cache_root, cfg.dataset, cfg.splits, cfg.memory_budget_mb << 20)
    data = _memory_data(cfg) if mode == "memory" else _stream_data(cfg)
    stats = data["stats"]
    llm_path, llm_info = resolve_llm(cfg)
    llm = load_frozen_llm(llm_path)
    llm_info["hidden_size"] = int(llm.config.hidden_size)
    seed_everything(cfg.loop.seed)  # trainable init depends only on the seed
    model = SimV0Model(llm, data["dv"], data["F"], cfg.K, telemetry_hidden=cfg.telemetry_hidden, dropout=cfg.dropout)
    if mode == "memory":
        task = SimHeadsTask(cfg, model, data["train"], data["val"])
    else:
        task = StreamingSimHeadsTask(cfg, model, stats, data["majority"], data["eval_loaders"])
    info = {"F": data["F"], "dv": data["dv"], "d": llm_info["hidden_size"], "K": cfg.K, "data_mode": mode, **data["counts"],
            "telemetry_norm": stats, "llm": llm_info, "majority": task.majority, "labels": {h: list(v) for h, v in LABELS.items()}}
    return task, info


def _memory_data(cfg: SimHeadsConfig) -> dict:
    train_split, val_split = cfg.splits
    train_arrays, tinfo = load_split(cfg.cache_root, cfg.dataset, train_split)
    val_arrays, vinfo = load_split(cfg.cache_root, cfg.dataset, val_split)
    if (tinfo["F"], tinfo["dv"]) != (vinfo["F"], vinfo["dv"]):
        raise ValueError(f"{train_split} and {val_split} caches differ in (F, dv): {(tinfo['F'], tinfo['dv'])} vs {(vinfo['F'], vinfo['dv'])}")
    stats = _train_stats(tinfo["telemetry_stats"], train_split)  # computed once over the train split, kept in its rover_meta manifest
    for arr in (train_arrays, val_arrays):
        arr["telemetry"] = normalise_telemetry(arr["telemetry"], stats)
    counts = {"n_train": tinfo["n"], "n_val": vinfo["n"], "dropped": {"train": tinfo["dropped"], "val": vinfo["dropped"]}}
    return {"train": train_arrays, "val": val_arrays, "stats": stats, "F": tinfo["F"], "dv": tinfo["dv"], "counts": counts}


def _stream_data(cfg: SimHeadsConfig) -> dict:
    """Shapes, counts, stats and the train majority classes from manifests and label arrays only."""
    from navcache.cache_specs import open_cache

    train_split, val_split = cfg.splits
    with open_cache(cfg.cache_root, cfg.dataset, train_split, "rover_meta") as meta:
        stats = _train_stats(meta.stats.get("telemetry"), train_split)
    loaders = {s: stream_split(cfg.cache_root, cfg.dataset, s, stats, batch_size=cfg.loop.batch_size, shuffle=False, mode="stream",
                               memory_budget=cfg.memory_budget_mb << 20, num_workers=cfg.num_workers, shuffle_buffer=cfg.shuffle_buffer)
               for s in cfg.splits}  # kept as the task's evaluation loaders
    first = {s: next(iter(ld)) for s, ld in loaders.items()}
    F_dv = {s: tuple(b["vis_feats"].shape[1:]) for s, b in first.items()}
    if F_dv[train_split] != F_dv[val_split]:
        raise ValueError(f"{train_split} and {val_split} caches differ in (F, dv): {F_dv[train_split]} vs {F_dv[val_split]}")
    with open_cache(cfg.cache_root, cfg.dataset, train_split, "rover_meta") as meta:
        kept = np.isin(np.asarray(meta.episodes, dtype=object), np.asarray(loaders[train_split].episodes, dtype=object))
        majority = {h: int(np.bincount(meta.load(h)[kept], minlength=N_CLASSES[h]).argmax()) for h in HEAD_NAMES}
    counts = {"n_train": len(loaders[train_split].episodes), "n_val": len(loaders[val_split].episodes),
              "dropped": {s: ld.join_report.n_dropped.get("feats", 0) for s, ld in zip(("train", "val"), loaders.values())}}
    F_, dv = F_dv[train_split]
    return {"stats": stats, "F": int(F_), "dv": int(dv), "majority": majority, "counts": counts,
            "eval_loaders": {(s, cfg.loop.batch_size): ld for s, ld in loaders.items()}}


def _train_stats(stats: dict | None, train_split: str) -> dict:
    if not stats:
        raise ValueError(f"the {train_split} rover_meta cache has no telemetry stats: rebuild it with `navcache extract`")
    return stats


def val_batches(task: SimHeadsTask, batch_size: int):
    """The val split in batches, whichever path the task reads it from."""
    return task.eval_batches("val", batch_size)


def train_sim_heads(config: SimHeadsConfig | None = None) -> dict:
    """Train; returns {"best": {"epoch", "val"}, "last": {"train", "val"}, "baselines", "out_dir", "export_dir", "labels"}.

    Rank 0 ends by writing ``<out_dir>/export/`` from best.pt (``export.export_checkpoint``:
    model.safetensors + config.json + labels.json, loaded by ``SimV0Model.from_pretrained``).

    The frozen LLM is not in the checkpoints (only trainable weights are); ``metadata.llm`` says where
    it is and whether it is random-init. ``metadata.telemetry_norm`` holds the train mean/std.
    """
    cfg = config or SimHeadsConfig()
    task, info = build_task(cfg)
    metadata = {"head": "sim-heads", **{k: v for k, v in info.items() if k not in ("train_cache", "val_cache")}, "config": cfg.to_dict()}
    result = run_loop(task, cfg.loop, config_dict={"sim_heads": cfg.to_dict(), "data": info}, metadata=metadata)
    out = Path(cfg.out_dir)
    master = result["rank"] == 0 and is_master()
    export = out / "export"
    report = None
    if master:  # only rank 0 writes files; the run's device (where run_loop left the model) predicts
        export_checkpoint(out / "checkpoints" / "best.pt", export, model=task.model)
        from .report import write_training_report

        report = write_training_report(out, val_batches(task, cfg.loop.batch_size), next(task.model.parameters()).device)
    base = {k: v for k, v in result["last"]["val"].items() if k.startswith("base_majority_")}
    return {**{k: result[k] for k in ("best", "last")}, "baselines_val": base, "majority": task.majority,
            "out_dir": str(out), "export_dir": str(export), "labels": str(export / LABELS_FILE), "report": report}
