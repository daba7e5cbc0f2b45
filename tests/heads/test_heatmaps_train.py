"""The heatmaps head end to end on the session's demo caches (demo_heatmaps + demo_heatmaps_vggt):
train with the shared loop, then predict a split into per-video files."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from navcache.heads import registry
from navcache.heads.heatmaps import load_config, predict_split, train_head


def test_reads_name_the_tokens_dataset_too():
    head = registry.get("heatmaps")
    need = registry.reads(head, "demo_heatmaps", ["train"])
    assert need[:4] == [("demo_heatmaps", "train", s) for s in ("geometry", "keyframes", "covisibility", "frame_features")]
    assert ("demo_heatmaps_vggt", "train", "geometry") in need
    assert registry.reads(head, "scans", ["val"]) == [("scans", "val", s) for s in ("geometry", "keyframes", "covisibility", "frame_features")]


@pytest.mark.slow
def test_train_then_predict_on_the_demo(demo_cache_root, tmp_path):
    cfg = load_config(None, "demo", cache_root=str(demo_cache_root), out_dir=str(tmp_path / "run"), llm=None,
                      loop={"epochs": 2, "batch_size": 64})
    r = train_head(cfg)
    val = r["best"]["val"]
    assert val["n"] > 50
    assert val["kl"] < val["base_uniform_kl"] and val["top1_hit"] > val["base_uniform_top1_hit"]
    for k in ("base_mean_kl", "base_mean_top1_hit", "ring_dir", "base_mean_ring_dir", "ce_up"):
        assert math.isfinite(val[k]), k
    out = tmp_path / "pred"
    s = predict_split(tmp_path / "run" / "checkpoints" / "best.pt", demo_cache_root, "demo_heatmaps", "val", out)
    assert s["n"] == 2 and s["metrics"]["kl"] == pytest.approx(val["kl"], rel=1e-3, abs=0.05)
    for video, m in s["episodes"].items():
        sel = np.load(out / f"{video}_selected_indices.npy")
        summary = json.loads((out / f"{video}_summary.json").read_text())
        assert summary["keyframes"] == sel.tolist() and len(sel) == 8
        assert len(summary["pairs"]) == 8 * 7 and summary["metrics"] == m and m["n"] > 0
