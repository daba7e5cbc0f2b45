"""heads/sim_heads/export: ``<out_dir>/export/`` (safetensors + config.json + labels.json) and
``SimV0Model.from_pretrained``, on one short EMA training run over the session's demo rover caches.

The reference is the best checkpoint read back by ``load_for_inference``: the export must predict
exactly what it predicts, hold exactly its (EMA) trainable weights and nothing of the frozen LLM.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from navcache.cache_specs import open_cache
from navcache.cache_specs.labels import LABELS
from navcache.heads.sim_heads import SimHeadsConfig, SimV0Model, export_checkpoint, load_for_inference, predict_split, train_sim_heads
from navcache.heads.sim_heads.data import load_split, normalise_telemetry
from navcache.heads.sim_heads.predict import predict_arrays
from navcache.heads.train_loop import LoopConfig

DATASET = "demo_rover"
FILES = ("model.safetensors", "config.json", "labels.json")


@pytest.fixture(scope="module")
def trained(demo_cache_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("sim_export_run")
    loop = LoopConfig(epochs=3, batch_size=32, lr=3e-3, seed=0, device="cpu", ema_decay=0.9)
    res = train_sim_heads(SimHeadsConfig(cache_root=str(demo_cache_root), out_dir=str(out), loop=loop))
    return out, res


@pytest.fixture(scope="module")
def val(demo_cache_root):
    return load_split(demo_cache_root, DATASET, "val")


def _best(out: Path) -> tuple[Path, dict]:
    path = out / "checkpoints" / "best.pt"
    return path, torch.load(path, map_location="cpu", weights_only=True)


def _predict(model, md, val) -> list[dict]:
    arrays, info = val
    tel = normalise_telemetry(arrays["telemetry"], md["telemetry_norm"])
    return predict_arrays(model, md, arrays["vis_feats"], tel, info["episodes"], batch_size=64)


def _copy_export(out: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "export"
    shutil.copytree(out / "export", dst)
    return dst


def test_export_holds_the_best_ema_weights_and_no_llm(trained):
    out, res = trained
    export = out / "export"
    assert res["export_dir"] == str(export)
    assert sorted(p.name for p in export.iterdir()) == sorted(FILES)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp / set-aside folders left
    _, ckpt = _best(out)
    assert ckpt.get("ema") is not None
    weights = load_file(str(export / "model.safetensors"))
    assert not [k for k in weights if k.startswith("llm.")]
    assert set(weights) == set(ckpt["ema"]) == set(ckpt["model"])
    assert all(torch.equal(weights[k], ckpt["ema"][k]) for k in weights)
    assert any(not torch.equal(weights[k], ckpt["model"][k]) for k in weights)  # EMA, not the raw training weights
    labels = json.loads((export / "labels.json").read_text())
    assert labels == {h: {str(i): n for i, n in enumerate(v)} for h, v in LABELS.items()}


def test_config_holds_train_stats_and_how_to_rebuild(trained, demo_cache_root):
    out, _ = trained
    cfg = json.loads((out / "export/config.json").read_text())
    _, ckpt = _best(out)
    md = ckpt["metadata"]
    with open_cache(demo_cache_root, DATASET, "train", "rover_meta") as meta:
        assert cfg["telemetry_norm"] == meta.stats["telemetry"]
    assert cfg["format_version"] == 1 and cfg["model_type"] == "navcache-sim-v0-heads"
    assert (cfg["dv"], cfg["F"], cfg["K"], cfg["d"]) == (md["dv"], md["F"], md["K"], md["d"])
    assert (cfg["telemetry_hidden"], cfg["dropout"]) == (md["config"]["telemetry_hidden"], md["config"]["dropout"])
    assert cfg["labels"] == {h: list(v) for h, v in LABELS.items()}
    assert cfg["llm"]["random_init"] is True and cfg["llm"]["seed"] == 0
    assert {k: cfg["llm"][k] for k in ("n_layer", "n_head", "n_embd")} == {k: md["llm"][k] for k in ("n_layer", "n_head", "n_embd")}
    assert cfg["source"]["best_epoch"] == ckpt["epoch"] and cfg["source"]["ema"] is True


def test_from_pretrained_predicts_exactly_as_best_checkpoint(trained, val, demo_cache_root, tmp_path):
    out, _ = trained
    best, _ = _best(out)
    ref_model, ref_md = load_for_inference(best)
    model = SimV0Model.from_pretrained(out / "export", map_location="cpu")
    assert not model.training and not any(p.requires_grad for p in model.llm.parameters())
    assert model.export_config["telemetry_norm"] == ref_md["telemetry_norm"]
    preds = _predict(model, {"telemetry_norm": model.export_config["telemetry_norm"]}, val)
    assert preds == _predict(ref_model, ref_md, val)
    # the export folder is accepted wherever a checkpoint is
    a = predict_split(best, demo_cache_root, DATASET, "val", tmp_path / "ckpt.jsonl")
    b = predict_split(out / "export", demo_cache_root, DATASET, "val", tmp_path / "export.jsonl")
    assert (tmp_path / "ckpt.jsonl").read_bytes() == (tmp_path / "export.jsonl").read_bytes()
    assert a["accuracy"] == b["accuracy"] and b["epoch"] == a["epoch"]


def test_random_init_llm_recreated_when_its_folder_is_gone(trained, val, tmp_path):
    out, _ = trained
    export = _copy_export(out, tmp_path)
    cfg = json.loads((export / "config.json").read_text())
    cfg["llm"]["path"] = str(tmp_path / "moved_away")  # as on another machine: only seed and sizes are left
    (export / "config.json").write_text(json.dumps(cfg))
    model = SimV0Model.from_pretrained(export)
    ref_model, ref_md = load_for_inference(out / "checkpoints" / "best.pt")
    assert _predict(model, {"telemetry_norm": cfg["telemetry_norm"]}, val) == _predict(ref_model, ref_md, val)


def _drop(export: Path, name: str) -> None:
    (export / name).unlink()


def _truncate(export: Path, name: str) -> None:
    data = (export / name).read_bytes()
    (export / name).write_bytes(data[: len(data) // 2])


def _edit(export: Path, **changes) -> None:
    cfg = json.loads((export / "config.json").read_text())
    cfg.update(changes)
    (export / "config.json").write_text(json.dumps(cfg))


def _add_llm_weight(export: Path) -> None:
    weights = load_file(str(export / "model.safetensors"))
    weights["llm.wte.weight"] = torch.zeros(256, 64)
    save_file(weights, str(export / "model.safetensors"))


DAMAGE = {
    "no weights": (lambda e: _drop(e, "model.safetensors"), FileNotFoundError, "model.safetensors is missing"),
    "no config": (lambda e: _drop(e, "config.json"), FileNotFoundError, "config.json is missing"),
    "cut weights": (lambda e: _truncate(e, "model.safetensors"), ValueError, "not a readable safetensors file"),
    "cut config": (lambda e: _truncate(e, "config.json"), ValueError, "config.json is not valid JSON"),
    "other model": (lambda e: _edit(e, model_type="navcache-gru-motion-encoder"), ValueError, "is not a sim-heads export"),
    "newer format": (lambda e: _edit(e, format_version=2), ValueError, "format_version 2"),
    "llm weights": (_add_llm_weight, ValueError, "unexpected ['llm.wte.weight']"),
    "other shapes": (lambda e: _edit(e, telemetry_hidden=32), ValueError, "does not match"),
    "missing llm": (lambda e: _edit(e, llm={"random_init": False, "path": "/nonexistent/llm"}), FileNotFoundError, "/nonexistent/llm"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_export_gives_a_clear_error(trained, tmp_path, damage):
    out, _ = trained
    export = _copy_export(out, tmp_path)
    harm, error, words = DAMAGE[damage]
    harm(export)
    with pytest.raises(error) as e:
        SimV0Model.from_pretrained(export)
    assert words in str(e.value)


def test_missing_export_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no sim-heads export folder"):
        SimV0Model.from_pretrained(tmp_path / "nothing")


@pytest.mark.parametrize("fail_at", [1, 2])
def test_interrupted_export_leaves_the_old_one_intact(trained, tmp_path, monkeypatch, fail_at):
    """A crash at either rename of the commit (1: before the old export is set aside, 2: after) leaves
    the previous export byte for byte, and nothing else beside it."""
    out, _ = trained
    export = _copy_export(out, tmp_path)
    before = {n: (export / n).read_bytes() for n in FILES}
    real, calls = os.replace, []

    def crash(src, dst):
        if "export" not in Path(src).name + Path(dst).name:  # someone else's rename
            return real(src, dst)
        calls.append(src)
        if len(calls) == fail_at:
            raise KeyboardInterrupt("killed between the temp write and the rename")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(out / "checkpoints" / "last.pt", export)
    monkeypatch.undo()
    assert len(calls) >= fail_at
    assert {n: (export / n).read_bytes() for n in FILES} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    # an uninterrupted export then replaces it whole
    export_checkpoint(out / "checkpoints" / "last.pt", export)
    assert json.loads((export / "config.json").read_text())["source"]["checkpoint"].endswith("last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    SimV0Model.from_pretrained(export)


def test_cli_predict_takes_an_export_folder(trained, demo_cache_root, tmp_path):
    """``navcache predict sim-heads --checkpoint <export>``: the dataset and cache root recorded in the
    export, the same JSONL as from best.pt; a broken export is a configuration error naming the file."""
    from typer.testing import CliRunner

    from navcache import cli
    from navcache.cache_specs.errors import EXIT_CONFIG

    out, _ = trained
    run = lambda *a: CliRunner().invoke(cli.app, [str(x) for x in a])  # noqa: E731
    r = run("predict", "sim-heads", "--checkpoint", out / "checkpoints/best.pt", tmp_path / "ckpt.jsonl")
    assert r.exit_code == 0, r.output
    r = run("predict", "sim-heads", "--checkpoint", out / "export", tmp_path / "export.jsonl")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "export.jsonl").read_bytes() == (tmp_path / "ckpt.jsonl").read_bytes()
    broken = _copy_export(out, tmp_path)
    _truncate(broken, "config.json")
    r = run("predict", "sim-heads", "--checkpoint", broken, tmp_path / "o.jsonl")
    assert r.exit_code == EXIT_CONFIG and "config.json is not valid JSON" in r.output
    assert not (tmp_path / "o.jsonl").exists()
