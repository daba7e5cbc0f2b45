"""heads/sim_heads inference: ``predict_json``, ``load_for_inference`` / ``predict_split``, ``navcache predict
sim-heads`` and the end-of-training report, on one short training run over the demo rover caches.

The trainer's recorded metrics are the reference: predictions made independently from best.pt (rebuilt
model, caches read again, JSON labels mapped back to ids) must score exactly what the trainer recorded.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from navcache.cache_specs import open_cache
from navcache.cache_specs.labels import LABELS
from navcache.heads.sim_heads import (
    SimHeadsConfig,
    load_for_inference,
    predict_split,
    train_sim_heads,
)
from navcache.heads.sim_heads.data import load_split, normalise_telemetry
from navcache.heads.train_loop import LoopConfig

DATASET = "demo_rover"
EPOCHS = 10
# accuracies are k / n with n = 80 or 240; the trainer's are float32 means, ours float64: equal counts
# differ by far less than this, different counts by at least 1/240
SAME = 1e-6


@pytest.fixture(scope="module")
def rover_caches(demo_cache_root):
    return demo_cache_root  # built once per test session (tests/conftest.py)


@pytest.fixture(scope="module")
def trained(rover_caches, tmp_path_factory):
    out = tmp_path_factory.mktemp("sim_predict_run")
    loop = LoopConfig(epochs=EPOCHS, batch_size=32, lr=3e-3, seed=0, device="cpu")
    res = train_sim_heads(SimHeadsConfig(cache_root=str(rover_caches), out_dir=str(out), loop=loop))
    return out, res


def _best(trained) -> tuple[Path, dict]:
    out, _ = trained
    path = out / "checkpoints" / "best.pt"
    return path, torch.load(path, map_location="cpu", weights_only=True)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def test_predict_json_probs_sum_to_one_and_label_is_argmax(trained, rover_caches):
    best, ckpt = _best(trained)
    rng_before = torch.get_rng_state()
    model, md = load_for_inference(best)
    assert torch.equal(torch.get_rng_state(), rng_before)  # rebuilding a model leaves the caller's RNG alone
    assert md["checkpoint"]["epoch"] == ckpt["epoch"] and not model.training
    arrays, info = load_split(rover_caches, DATASET, "val")
    tel = normalise_telemetry(arrays["telemetry"], md["telemetry_norm"])
    batch = {"vis_feats": arrays["vis_feats"][:16], "telemetry": tel[:16], "id": info["episodes"][:16]}
    preds = model.predict_json(batch)
    logits = model(batch["vis_feats"], batch["telemetry"])
    assert len(preds) == 16 and [p["id"] for p in preds] == info["episodes"][:16]
    json.dumps(preds)  # plain values only
    for i, p in enumerate(preds):
        assert list(p) == ["id", "risk", "reason", "action"]
        for h, names in LABELS.items():
            probs = p[h]["probs"]
            assert list(probs) == list(names)
            assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
            assert p[h]["label"] == max(probs, key=probs.get) == names[int(logits[h][i].argmax())]
            assert list(probs.values()) == pytest.approx(logits[h][i].softmax(-1).tolist(), abs=1e-6)
    no_ids = model.predict_json({k: v for k, v in batch.items() if k != "id"})
    assert "id" not in no_ids[0] and no_ids[0]["risk"] == preds[0]["risk"]


def test_predict_split_reproduces_best_val_metrics(trained, rover_caches, tmp_path):
    out, res = trained
    best, ckpt = _best(trained)
    summary = predict_split(best, rover_caches, DATASET, "val", tmp_path / "val.jsonl")
    lines = _lines(tmp_path / "val.jsonl")
    with open_cache(rover_caches, DATASET, "val", "frame_features") as c:
        cache_ids = list(c.episodes)
    assert [r["id"] for r in lines] == cache_ids and summary["n"] == len(cache_ids) == 80
    assert summary["epoch"] == ckpt["epoch"] == res["best"]["epoch"]
    recorded = {r["epoch"]: r for r in _lines(out / "metrics/val_metrics.jsonl")}[res["best"]["epoch"]]
    truth = load_split(rover_caches, DATASET, "val")[0]
    for h, names in LABELS.items():
        assert summary["accuracy"][h] == pytest.approx(recorded[f"{h}_accuracy"], abs=SAME), h
        # and from the file itself, not only from the summary
        pred = np.array([names.index(r[h]["label"]) for r in lines])
        assert (pred == truth[h].numpy()).mean() == pytest.approx(recorded[f"{h}_accuracy"], abs=SAME), h
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left nothing behind


def test_telemetry_uses_train_stats(trained, rover_caches, tmp_path, monkeypatch):
    import navcache.heads.sim_heads.predict as predict_mod

    best, ckpt = _best(trained)
    # predicting the train split reproduces the trainer's train evaluation of that epoch
    summary = predict_split(best, rover_caches, DATASET, "train", tmp_path / "train.jsonl")
    assert summary["n"] == 240
    for h in LABELS:
        assert summary["accuracy"][h] == pytest.approx(ckpt["metrics"]["train"][f"{h}_accuracy"], abs=SAME), h
    # on val, the stats used are the checkpoint's train stats, not the val cache's own
    seen = []
    real = predict_mod.normalise_telemetry
    monkeypatch.setattr(predict_mod, "normalise_telemetry", lambda t, stats: seen.append(stats) or real(t, stats))
    predict_split(best, rover_caches, DATASET, "val", tmp_path / "val.jsonl")
    with open_cache(rover_caches, DATASET, "val", "rover_meta") as c:
        val_own = c.stats["telemetry"]
    assert seen == [ckpt["metadata"]["telemetry_norm"]] and seen[0]["mean"] != val_own["mean"]


def test_random_llm_recreated_when_its_folder_is_gone(trained, rover_caches, tmp_path):
    best, ckpt = _best(trained)
    ckpt["metadata"]["llm"]["path"] = str(tmp_path / "moved_away")
    moved = tmp_path / "moved.pt"
    torch.save(ckpt, moved)
    predict_split(best, rover_caches, DATASET, "val", tmp_path / "a.jsonl")
    predict_split(moved, rover_caches, DATASET, "val", tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert not (tmp_path / "moved_away").exists()


def _navcache(*args):
    from navcache import cli
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def test_cli_predict_sim_heads(trained, rover_caches, tmp_path):
    best, _ = _best(trained)
    out = tmp_path / "preds" / "val.jsonl"
    r = _navcache("predict", "sim-heads", "--checkpoint", best, "--cache-root", rover_caches, "--dataset", DATASET, out)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["n"] == len(_lines(out)) == 80 and summary["split"] == "val"
    # no --cache-root / --dataset: the ones recorded in the checkpoint
    out2 = tmp_path / "val2.jsonl"
    r = _navcache("predict", "sim-heads", "--checkpoint", best, out2)
    assert r.exit_code == 0, r.output
    assert out2.read_text() == out.read_text() and json.loads(r.stdout)["accuracy"] == summary["accuracy"]


def test_cli_errors_are_config_errors(trained, tmp_path):
    from navcache.cache_specs.errors import EXIT_CONFIG

    best, _ = _best(trained)
    r = _navcache("predict", "sim-heads", "--checkpoint", tmp_path / "nope.pt", tmp_path / "o.jsonl")
    assert r.exit_code == EXIT_CONFIG and "no checkpoint at" in r.output and "nope.pt" in r.output
    r = _navcache("predict", "sim-heads", "--checkpoint", best, "--cache-root", tmp_path / "empty", tmp_path / "o.jsonl")
    assert r.exit_code == EXIT_CONFIG and "not a complete cache" in r.output
    assert not (tmp_path / "o.jsonl").exists()


def test_training_report(trained):
    out, res = trained
    m = out / "metrics"
    for name in ("curves.png", *(f"confusion_val_{h}.png" for h in LABELS)):
        assert (m / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    doc = json.loads((m / "confusion_val.json").read_text())
    assert doc["epoch"] == res["best"]["epoch"] and doc["n"] == res["best"]["val"]["n"] == 80
    for h, names in LABELS.items():
        mat = np.array(doc["matrices"][h])
        assert mat.shape == (len(names), len(names)) and mat.sum() == 80, h
        assert mat.sum(1).tolist() == np.bincount(load_truth(out, h), minlength=len(names)).tolist(), h  # rows are the true classes
        assert mat.trace() / 80 == pytest.approx(res["best"]["val"][f"{h}_accuracy"], abs=SAME), h
    assert res["report"]["confusion_json"] == str(m / "confusion_val.json")


def load_truth(out: Path, head: str) -> np.ndarray:
    md = torch.load(out / "checkpoints/best.pt", weights_only=True)["metadata"]["config"]
    return load_split(md["cache_root"], md["dataset"], "val")[0][head].numpy()
