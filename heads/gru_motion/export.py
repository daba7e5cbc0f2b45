"""``export/``: the frozen motion encoder as ``model.safetensors`` + ``config.json``.

    from navcache.heads.gru_motion import MotionEncoder
    enc = MotionEncoder.from_pretrained("runs/gru_motion/export")
    emb = enc(deltas, dist_bins, yaw_bins, step_valid)   # [B, T-1, H]
"""
from __future__ import annotations

from pathlib import Path

from .model import MotionEncoder


def export_encoder(encoder: MotionEncoder, out_dir: str | Path, data_info: dict, best_epoch: int | None = None) -> Path:
    extra = {
        "dist_edges": data_info["dist_edges"],
        "yaw_edges": data_info["yaw_edges"],
        "steps": data_info["steps"],
        "inputs": {"deltas": "f32 [B, S, 3]", "dist_bins": "i64 [B, S]", "yaw_bins": "i64 [B, S]", "step_valid": "bool [B, S]"},
        "output": "f32 [B, S, hidden]; zeros at invalid steps",
        "source": {"cache": data_info.get("train_cache"), "best_epoch": best_epoch},
    }
    return encoder.save_pretrained(out_dir, extra=extra)
