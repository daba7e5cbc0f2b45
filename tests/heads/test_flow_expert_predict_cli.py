"""``navcache predict flow-expert`` with a two-camera checkpoint in a demo folder: the second
camera's context cache is brought up to date too (the checkpoint's config decides what is read)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from navcache.cache_specs import open_cache
from navcache.heads.flow_expert import load_config, train_flow_expert


@pytest.mark.slow
def test_predict_builds_every_camera_cache_of_the_checkpoint(demo_world, demo_cache_root, tmp_path, monkeypatch):
    import cli

    cfg = load_config(None, "demo", cache_root=str(demo_cache_root), out_dir=str(tmp_path / "run"),
                      context_datasets=["demo_lerobot", "demo_lerobot_left"], loop={"epochs": 1, "eval_max_batches": 1, "device": "cpu"})
    train_flow_expert(cfg)
    # the recorded cache root is gone (a run moved between machines): predict falls back to the demo here
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    ckpt["metadata"]["config"]["cache_root"] = str(tmp_path / "gone")
    torch.save(ckpt, tmp_path / "moved.pt")
    work = tmp_path / "work"
    shutil.copytree(demo_world, work / "navcache_demo")  # a fresh demo folder: no caches yet
    monkeypatch.chdir(work)
    rc = cli._predict("flow-expert", tmp_path / "moved.pt", tmp_path / "pred.jsonl", "val", None, None, None, "cpu")
    assert rc == 0
    with open_cache(work / "navcache_cache", "demo_lerobot_left", "val", "frame_features") as left, \
            open_cache(work / "navcache_cache", "demo_lerobot", "val", "robot_meta") as meta:
        assert left.manifest["counts"]["rows"] == meta.manifest["counts"]["rows"]
        n = meta.manifest["counts"]["rows"]
    rows = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert len(rows) == n and len(rows[0]["actions"]) == cfg.horizon
