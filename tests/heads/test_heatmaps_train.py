"""The heatmaps head end to end on the session's demo caches (demo_heatmaps + demo_heatmaps_vggt, the
demo's glances): it beats both baselines on val across seeds, and predict writes the seed's files."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from navcache.heads import registry
from navcache.heads.heatmaps import load_config, predict_split, train_head

#: cheap settings for the tests: narrow, no upsampling loss, 3 epochs of the ~1,900 train pairs; the
#: demo preset's frozen tiny Qwen2 stays in (an override of None means "not given", not "no LLM")
FAST = {"d_model": 32, "upsample_loss_weight": 0.0}


def test_reads_name_the_tokens_dataset_too():
    head = registry.get("heatmaps")
    need = registry.reads(head, "demo_heatmaps", ["train"])
    assert need[:4] == [("demo_heatmaps", "train", s) for s in ("geometry", "keyframes", "covisibility", "frame_features")]
    assert ("demo_heatmaps_vggt", "train", "geometry") in need
    assert registry.reads(head, "scans", ["val"]) == [("scans", "val", s) for s in ("geometry", "keyframes", "covisibility", "frame_features")]


def _train(cache_root, out, seed: int, epochs: int = 3):
    cfg = load_config(None, "demo", cache_root=str(cache_root), out_dir=str(out), **FAST,
                      loop={"epochs": epochs, "batch_size": 64, "lr": 2e-3, "seed": seed})
    return train_head(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_beats_both_baselines_on_val(demo_cache_root, tmp_path, seed):
    """KL, top-1 hit and ring-direction mass on the val glances, each by a margin, against the uniform
    distribution and the mean train target ("where things usually are"), for two seeds."""
    val = _train(demo_cache_root, tmp_path / "run", seed)["best"]["val"]
    assert val["n"] > 300
    for base in ("base_uniform_", "base_mean_"):
        assert val["kl"] < 0.6 * val[f"{base}kl"], (base, val["kl"], val[f"{base}kl"])
        assert val["top1_hit"] > val[f"{base}top1_hit"] + 0.2, (base, val["top1_hit"], val[f"{base}top1_hit"])
        assert val["ring_dir"] > val[f"{base}ring_dir"] + 0.15, (base, val["ring_dir"], val[f"{base}ring_dir"])


@pytest.mark.slow
def test_train_then_predict_writes_the_seeds_files(demo_cache_root, tmp_path):
    r = _train(demo_cache_root, tmp_path / "run", 0, epochs=1)  # what is checked here is predict
    val = r["best"]["val"]
    for k in ("base_mean_kl", "base_mean_top1_hit", "ring_dir", "base_mean_ring_dir"):
        assert math.isfinite(val[k]), k
    out = tmp_path / "pred"
    s = predict_split(tmp_path / "run" / "checkpoints" / "best.pt", demo_cache_root, "demo_heatmaps", "val", out)
    assert s["n"] == 12 and s["metrics"]["kl"] == pytest.approx(val["kl"], rel=1e-3, abs=0.02)
    for video, m in s["episodes"].items():
        sel = np.load(out / f"{video}_selected_indices.npy")
        summary = json.loads((out / f"{video}_summary.json").read_text())
        k = len(sel)  # up to 8: space-aware selection stops when no frame adds voxels
        assert summary["keyframes"] == sel.tolist() and 2 <= k <= 8 and summary["pictures_on"] == "depth"
        assert len(summary["pairs"]) == k * (k - 1) and summary["metrics"] == m and m["n"] > 0
        info = np.load(out / f"{video}_geometry_info.npz")
        assert info["extrinsic"].shape == (k, 3, 4) and info["frame_index"].tolist() == sel.tolist()
        grid = Image.open(out / f"{video}_heatmaps.png")
        assert grid.width > 800 and grid.height > 400
        assert all((out / f"{video}_heatmap_{i}.png").exists() for i in range(k))
    one = sorted(s["episodes"])[0]
    again = predict_split(tmp_path / "run" / "checkpoints" / "best.pt", demo_cache_root, "demo_heatmaps", "val", tmp_path / "one",
                          episodes=[one])
    assert list(again["episodes"]) == [one] and again["episodes"][one] == s["episodes"][one]
    with pytest.raises(ValueError, match="no episode"):
        predict_split(tmp_path / "run" / "checkpoints" / "best.pt", demo_cache_root, "demo_heatmaps", "val", tmp_path / "x",
                      episodes=["glance_9999"])


@pytest.mark.slow
def test_cli_train_then_predict_one_episode_on_source_frames(demo_caches, tmp_path, monkeypatch):
    """``navcache train heatmaps`` (demo preset, cheap settings) then ``navcache predict heatmaps --episode``
    in the demo's folder: the pictures are drawn on the keyframes decoded through the project's source."""
    from typer.testing import CliRunner

    from navcache import cli

    monkeypatch.chdir(demo_caches)
    run = CliRunner().invoke(cli.app, ["train", "heatmaps", "--out-dir", str(tmp_path / "run"), "--epochs", "1", "--json",
                                       "--set", "llm=null", "--set", "d_model=32", "--set", "upsample_loss_weight=0"])
    assert run.exit_code == 0, run.output
    val = json.loads(run.stdout)["best"]["val"]
    assert val["kl"] < val["base_mean_kl"]
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    out = tmp_path / "pred"
    r = CliRunner().invoke(cli.app, ["predict", "heatmaps", str(out), "--checkpoint", str(ckpt), "--episode", "glance_0003"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "glance_0003_summary.json").read_text())
    assert summary["pictures_on"] == "frames" and summary["metrics"]["n"] > 0
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".png")[:2] == ["glance_0003_heatmap_0.png", "glance_0003_heatmap_1.png"]
    assert not any("glance_0000" in p.name for p in out.iterdir())
    bad = CliRunner().invoke(cli.app, ["predict", "heatmaps", str(tmp_path / "x"), "--checkpoint", str(ckpt), "--episode", "nope"])
    assert bad.exit_code == 2 and "no episode" in bad.stderr
