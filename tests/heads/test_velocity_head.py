"""velocity-head: baselines' definitions, tokens as a read-time column, and that the head learns on demo_vamos."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from navcache.cache_specs import open_cache
from navcache.heads.exports.openvla_stats import (action_to_bins, action_to_tokens, cache_tokens, normalize_q99, openvla_statistics,
                                                  tokens_to_action)
from navcache.heads.velocity_head import load_config, load_export, predict_split, train_head
from navcache.heads.velocity_head.train import BASELINES, back_project, fit_goal_homography


def test_goal_homography_is_the_pinhole_back_projection():
    # a level pinhole camera 0.9 m over the floor: pixel (u, v) of ground point (x fwd, y left)
    f, cx, cy, h = 64.0, 63.5, 47.5, 0.9
    rng = np.random.default_rng(0)
    pts = np.stack([rng.uniform(1.2, 4.0, 50), rng.uniform(-1.0, 1.0, 50)], 1)
    goal = np.stack([f * -pts[:, 1] / pts[:, 0] + cx, f * h / pts[:, 0] + cy], 1)
    steps = 8
    v = np.repeat((pts / steps)[:, None], steps, 1)  # constant velocity ending at the ground point
    Hm, resid = fit_goal_homography(goal, v, np.ones((50, steps), bool))
    assert resid < 1e-6
    test = np.array([[2.5, 0.3], [1.5, -0.7]])
    pix = np.stack([f * -test[:, 1] / test[:, 0] + cx, f * h / test[:, 0] + cy], 1)
    np.testing.assert_allclose(back_project(Hm, pix), test, atol=1e-6)


def test_cache_tokens_use_the_given_stats(demo_cache_root):
    train, val = (demo_cache_root / "demo_vamos" / s / "velocity" for s in ("train", "val"))
    stats = openvla_statistics(train)["vamos_dataset"]["action"]
    ids, tokens = cache_tokens(val, stats, vocab_size=32000)
    with open_cache(val) as c:
        assert ids == list(c.episodes)
        want = action_to_tokens(normalize_q99(c.load("action"), stats), 32000)
    np.testing.assert_array_equal(tokens, want)
    assert tokens.shape == (len(ids), 2) and ((tokens > 32000 - 257) & (tokens <= 32000 - 1)).all()
    # the class a token head predicts is the same bin
    np.testing.assert_array_equal(32000 - 1 - action_to_bins(normalize_q99(c_load(val), stats)), tokens)
    np.testing.assert_allclose(tokens_to_action(tokens, 32000), tokens_to_action(32000 - 1 - action_to_bins(normalize_q99(c_load(val), stats)), 32000))


def c_load(path):
    with open_cache(path) as c:
        return c.load("action")


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="features"):
        load_config(features="grid")
    with pytest.raises(ValueError, match="loss"):
        load_config(loss="huber")


@pytest.fixture
def one_thread():
    # a 40k-parameter model: torch's intra-op threads only fight over the cores
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_head_beats_every_baseline_on_demo_val(demo_cache_root, tmp_path, one_thread, seed):
    cfg = load_config(cache_root=str(demo_cache_root), out_dir=str(tmp_path / "run"), loop={"seed": seed, "epochs": 40})
    result = train_head(cfg)
    val = result["last"]["val"]  # the last epoch, not the best: no selection on the split we score
    best_base = min(val[f"{b}_l2"] for b in BASELINES)
    assert val["l2"] < 0.85 * best_base, {k: val[k] for k in ["l2"] + [f"{b}_l2" for b in BASELINES]}

    # export: weights + config + the train split's dataset_statistics.json
    export = tmp_path / "run" / "export"
    stats = json.loads((export / "dataset_statistics.json").read_text())
    assert stats == json.loads(json.dumps(openvla_statistics(demo_cache_root / "demo_vamos/train/velocity")))
    # predict from the checkpoint and from the export: one unnormalised line per val sample
    out = tmp_path / "val.jsonl"
    summary = predict_split(tmp_path / "run/checkpoints/best.pt", demo_cache_root, "demo_vamos", "val", out)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    with open_cache(demo_cache_root / "demo_vamos/val/velocity") as c:
        assert [r["id"] for r in lines] == list(c.episodes)
        action = c.load("action")
    pred = np.array([[r["v_x"], r["v_y"]] for r in lines])
    assert summary["metrics"]["l2"] == pytest.approx(np.linalg.norm(pred - action, axis=1).mean(), rel=1e-6)
    assert summary["metrics"]["l2"] == pytest.approx(result["best"]["val"]["l2"], rel=1e-5)
    model, md = load_export(export)
    assert summary["n"] == len(lines) and md["kind"] == "pooled" and not model.training
    out2 = tmp_path / "val_export.jsonl"
    predict_split(export, demo_cache_root, "demo_vamos", "val", out2)
    assert out2.read_text() == out.read_text()
