"""End-of-training pictures of a SIM heads run, written under ``<out_dir>/metrics/``::

    curves.png                           every metric over epochs, train vs val (``heads.plots.training_curves``)
    confusion_val_{risk,reason,action}.png
    confusion_val.json                   {"epoch", "checkpoint", "n", "labels": {head: [names]},
                                          "matrices": {head: [[int]] row = true, column = predicted}}

The confusion matrices come from the BEST checkpoint (the one a user would deploy), rebuilt with
``load_for_inference`` exactly as ``navcache predict sim-heads`` does, on the val arrays the trainer
scored, batch by batch (telemetry already normalised with the train stats).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from navcache.cache_specs.labels import LABELS
from navcache.cache_specs.layout import atomic_write_json
from navcache.heads.plots import confusion_matrix, plot_confusion, training_curves

from .predict import load_for_inference, predict_arrays, predicted_ids


def write_training_report(out_dir: str | Path, val_batches: Iterable[dict[str, torch.Tensor]], device: str | torch.device = "cpu") -> dict:
    """Write curves.png and the best checkpoint's val confusion matrices; returns {name: path}.

    val_batches: the trainer's val split in batches of "vis_feats" [B, F, dv], "telemetry" [B, 8]
    (normalised), "risk" / "reason" / "action" [B] int64.
    """
    out = Path(out_dir)
    metrics = out / "metrics"
    written = {"curves": training_curves(metrics / "train_metrics.jsonl", metrics / "val_metrics.jsonl", metrics / "curves.png")}

    best = out / "checkpoints" / "best.pt"
    model, md = load_for_inference(best, device)
    preds, truth = [], {h: [] for h in LABELS}
    for b in val_batches:
        preds += predict_arrays(model, md, b["vis_feats"], b["telemetry"])
        for h in LABELS:
            truth[h].append(b[h].cpu().numpy())
    epoch = md["checkpoint"]["epoch"]
    matrices = {}
    for h, names in LABELS.items():
        m = confusion_matrix(np.concatenate(truth[h]), predicted_ids(preds, h), len(names))
        matrices[h] = m.tolist()
        acc = m.trace() / max(int(m.sum()), 1)
        written[f"confusion_{h}"] = plot_confusion(m, names, metrics / f"confusion_val_{h}.png",
                                                   title=f"val {h}: best epoch {epoch}, accuracy {acc:.3f} ({int(m.sum())} clips)")
    doc = {"epoch": epoch, "checkpoint": str(best), "n": len(preds), "rows": "true", "columns": "predicted",
           "labels": {h: list(v) for h, v in LABELS.items()}, "matrices": matrices}
    written["confusion_json"] = metrics / "confusion_val.json"
    atomic_write_json(written["confusion_json"], doc)
    return {k: str(v) for k, v in written.items()}
