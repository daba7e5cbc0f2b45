"""heads/sim_heads: SIM v0 heads on a frozen LLM beat majority baselines on the demo rover caches.

Measured (demo scale 1: 240 train / 80 val clips; 30 epochs, lr 3e-3, last epoch on val):
    seed 0: risk acc 0.575 (majority 0.338), reason 0.512 (0.400), action 0.550 (0.412)
            macro-F1 risk 0.513 (0.126), reason 0.350 (0.143), action 0.333 (0.097)
    seed 1: risk acc 0.562, reason 0.475, action 0.538 (same baselines)
            macro-F1 risk 0.522, reason 0.456, action 0.324
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from navcache.heads.sim_heads import SimHeadsConfig, train_sim_heads
from navcache.heads.sim_heads.train import build_task
from navcache.heads.train_loop import LoopConfig, run_loop

ACC_MARGIN = 0.05
F1_MARGIN = 0.10
HEADS = ("risk", "reason", "action")


@pytest.fixture(scope="module")
def rover_caches(demo_cache_root):
    return demo_cache_root  # built once per test session (tests/conftest.py)


def _cfg(caches, out, epochs=30, seed=0):
    loop = LoopConfig(epochs=epochs, batch_size=32, lr=3e-3, seed=seed, device="cpu")
    return SimHeadsConfig(cache_root=str(caches), out_dir=str(out), loop=loop)


@pytest.fixture(scope="module")
def trained(rover_caches, tmp_path_factory):
    cfg = _cfg(rover_caches, tmp_path_factory.mktemp("sim_run"))
    return cfg, train_sim_heads(cfg)


def test_heads_beat_majority_baselines_on_val(trained):
    _, res = trained
    v = res["last"]["val"]  # last epoch: no selection on val behind these numbers
    assert v["n"] == 80
    for h in HEADS:
        assert v[f"{h}_accuracy"] >= v[f"base_majority_{h}_accuracy"] + ACC_MARGIN, (h, v)
        assert v[f"{h}_f1_macro"] >= v[f"base_majority_{h}_f1_macro"] + F1_MARGIN, (h, v)
    assert v["macro_f1"] == pytest.approx((v["risk_f1_macro"] + v["action_f1_macro"]) / 2)
    assert v["risk_high_fn_rate"] == pytest.approx(1 - v["risk_high_recall"])


def test_outputs_metadata_and_labels(trained):
    cfg, res = trained
    out = Path(cfg.out_dir)
    for f in ("checkpoints/last.pt", "checkpoints/best.pt", "metrics/train_metrics.jsonl", "metrics/val_metrics.jsonl",
              "logs/stdout.log", "config_resolved.yaml", "export/labels.json"):
        assert (out / f).is_file(), f
    labels = json.loads((out / "export/labels.json").read_text())
    assert labels["risk"]["3"] == "high" and len(labels["action"]) == 6 and len(labels["reason"]) == 4
    ckpt = torch.load(out / "checkpoints/best.pt", weights_only=True)
    md = ckpt["metadata"]
    assert md["llm"]["random_init"] is True and md["d"] == md["llm"]["hidden_size"] == 64
    assert md["dv"] == 96 and md["F"] == 8 and md["K"] == 4
    assert len(md["telemetry_norm"]["mean"]) == len(md["telemetry_norm"]["std"]) == 8
    assert not any(k.startswith("llm.") for k in ckpt["model"])  # the frozen LLM is never checkpointed
    rows = [json.loads(ln) for ln in (out / "metrics/val_metrics.jsonl").read_text().splitlines()]
    top = max(rows, key=lambda r: ((r["risk_high_recall"], r["macro_f1"]), -r["epoch"]))
    assert res["best"]["epoch"] == top["epoch"]


def test_llm_frozen_no_grad_and_unchanged(rover_caches, tmp_path):
    cfg = _cfg(rover_caches, tmp_path / "run", epochs=2)
    task, _ = build_task(cfg)
    llm = task.model.llm
    before = {n: p.detach().clone() for n, p in llm.named_parameters()}
    assert before and not any(p.requires_grad for p in llm.parameters())
    task.model.train()
    assert not llm.training and task.model.heads.training
    batch = {k: v[:16] for k, v in task.train_arrays.items()}
    loss, _ = task.loss(task.model, batch)
    loss.backward()
    assert all(p.grad is None for p in llm.parameters())
    assert task.model.query.grad is not None and task.model.vis_proj[0].weight.grad is not None
    run_loop(task, cfg.loop)
    for n, p in llm.named_parameters():
        assert torch.equal(p.detach(), before[n]), n


def test_same_seed_same_metrics(rover_caches, tmp_path):
    runs = [train_sim_heads(_cfg(rover_caches, tmp_path / f"r{i}", epochs=3)) for i in range(2)]
    a, b = ((Path(tmp_path / f"r{i}") / "metrics/val_metrics.jsonl").read_text() for i in range(2))
    assert a == b
    strip = lambda d: {k: v for k, v in d.items() if k != "time_s"}
    assert strip(runs[0]["last"]["train"]) == strip(runs[1]["last"]["train"])


def test_config_yaml_and_validation(tmp_path):
    from navcache.heads.sim_heads import load_config

    p = tmp_path / "s.yaml"
    p.write_text("cache_root: /x\nK: 2\nloss_weights: {reason: 0.25}\nloop: {epochs: 3, lr: 0.01}\nout_dir: /tmp/out\n")
    cfg = load_config(p)
    assert (cfg.K, cfg.loss_weights, cfg.loop.epochs, cfg.loop.out_dir) == (2, {"risk": 1.0, "reason": 0.25, "action": 1.0}, 3, "/tmp/out")
    with pytest.raises(ValueError, match="SimHeadsConfig.K"):
        SimHeadsConfig(K=0)
    with pytest.raises(ValueError, match="loss_weights"):
        SimHeadsConfig(loss_weights={"bogus": 1.0})
    with pytest.raises(ValueError, match="unknown"):
        load_config(p, bogus=1)


def test_llm_from_local_folder(trained, rover_caches, tmp_path):
    from dataclasses import replace

    cfg, _ = trained
    local = replace(_cfg(rover_caches, tmp_path / "run", epochs=1), llm=str(Path(cfg.out_dir) / "frozen_llm"))
    task, info = build_task(local)
    assert info["llm"] == {"path": local.llm, "random_init": False, "hidden_size": 64}
    assert task.model.d == 64 and not (tmp_path / "run" / "frozen_llm").exists()


def test_cli_train_on_the_demo_rebuilds_a_missing_cache_first(rover_caches, tmp_path, monkeypatch):
    """`navcache train sim-heads` where the embedded demo lives (no navcache.yaml): the caches the head READS
    are brought up to date first (a deleted one rebuilt, identical), then trained on; the run records their
    absolute root, so predicting works from anywhere."""
    import shutil

    from typer.testing import CliRunner

    from navcache import cli
    from tests.helpers import cache_checksums

    # in the session's shared demo folder (a copy elsewhere would re-encode: the demo encoder's
    # identity is its folder path); the rebuilt cache must equal the deleted one, checked below
    meta, feats = rover_caches / "demo_rover/val/rover_meta", rover_caches / "demo_rover/val/frame_features"
    before = {meta: cache_checksums(meta), feats: cache_checksums(feats)}
    shutil.rmtree(meta)
    monkeypatch.chdir(rover_caches.parent)
    r = CliRunner().invoke(cli.app, ["train", "sim-heads", "--epochs", "1", "--out-dir", str(tmp_path / "run"), "--json"])
    assert r.exit_code == 0, r.output
    assert {d: cache_checksums(d) for d in before} == before
    assert json.loads(r.stdout)["out_dir"] == str(tmp_path / "run")  # --json: the result alone on stdout
    md = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["metadata"]
    assert md["config"]["cache_root"] == str(rover_caches) and Path(md["config"]["cache_root"]).is_absolute()
