"""The ``navcache`` command line, in-process through Typer's CliRunner against ``cli.app``.

Every call passes ``-c`` (a project file in tmp_path), so the embedded demo is never generated.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import yaml
from typer.testing import CliRunner

from navcache import cli
from tests.helpers import REPO, cache_checksums, make_navila, write_project

N_EPISODES = 3  # make_navila: 2 records per episode -> 6 episodes -> 3 parts of 2 per stage
PARTS = 3
T = 8


def navcache(*args, code: int | None = 0):
    """Run ``navcache ARGS`` in-process; check the exit code unless ``code`` is None."""
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    if code is not None:
        assert result.exit_code == code, f"navcache {' '.join(map(str, args))} -> {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result


def as_json(result) -> dict:
    return json.loads(result.stdout)


def new_project(tmp: Path, model: Path, **overrides) -> Path:
    data = tmp / "data"
    if not data.exists():
        make_navila(data, n_episodes=N_EPISODES)
    return write_project(tmp, data, model, part_size=2, **overrides)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model):
    """A project built once with ``extract --json``: (folder, config, parsed output)."""
    tmp = tmp_path_factory.mktemp("cli_built")
    cfg = new_project(tmp, tiny_model)
    out = as_json(navcache("extract", "-c", cfg, "--json"))
    return tmp, cfg, out


def plan_by_stage(doc: dict) -> dict[str, dict]:
    return {p["stage"]: p for p in doc["plan"]}


# ---------------------------------------------------------------------------------- extract


def test_extract_json_has_totals(built):
    _, cfg, out = built
    assert out["errors"] == [] and out["dry_run"] is False
    assert out["totals"] == {"parts_built": 2 * PARTS, "parts_skipped": 0, "episodes_quarantined": 0, "frames_built": 2 * N_EPISODES * T}
    assert {s["stage"]: (s["parts_built"], s["episodes_ok"], s["finalized"]) for s in out["stages"]} == {
        "poses": (PARTS, 2 * N_EPISODES, True),
        "frame-features": (PARTS, 2 * N_EPISODES, True),
    }
    again = as_json(navcache("extract", "-c", cfg, "--json"))
    assert again["totals"]["parts_built"] == 0 and again["totals"]["parts_skipped"] == 2 * PARTS


def test_dry_run_and_status_report_missing_then_up_to_date(tmp_path, tiny_model):
    cfg = new_project(tmp_path, tiny_model)
    for args in (("extract", "--dry-run"), ("status",)):
        doc = plan_by_stage(as_json(navcache(*args, "-c", cfg, "--json")))
        assert set(doc) == {"poses", "frame-features"}
        for p in doc.values():
            assert (p["missing"], p["stale"], p["up-to-date"], p["complete"]) == (PARTS, 0, 0, False), (args, p)
    assert not (tmp_path / "cache/nav/train/poses/parts").exists()  # a dry run builds nothing

    navcache("extract", "-c", cfg)
    for args in (("extract", "--dry-run"), ("status",)):
        for p in plan_by_stage(as_json(navcache(*args, "-c", cfg, "--json"))).values():
            assert (p["missing"], p["stale"], p["up-to-date"], p["complete"]) == (0, 0, PARTS, True), (args, p)

    f = tmp_path / "data/train/ep002/frame_011.jpg"  # last frame of ep002-11, in the last part
    cv2.imwrite(str(f), 255 - cv2.imread(str(f)))
    doc = plan_by_stage(as_json(navcache("status", "-c", cfg, "--json")))
    assert (doc["frame-features"]["stale"], doc["frame-features"]["up-to-date"]) == (1, PARTS - 1)
    assert doc["poses"]["up-to-date"] == PARTS  # poses never read the images


# ---------------------------------------------------------------------------------- inspect


def test_inspect_one_cache_json(built):
    tmp, _, _ = built
    doc = as_json(navcache("inspect", tmp / "cache/nav/train/frame_features", "--json"))
    assert doc["counts"] == {"parts": PARTS, "episodes": 2 * N_EPISODES, "ok": 2 * N_EPISODES, "quarantined": 0, "rows": 2 * N_EPISODES * T}
    assert set(doc["arrays"]) == {"cls", "patch_pooled", "frame_index", "padded"}
    assert doc["provenance"]["encoder"]["random_init"] is True
    assert doc["quarantined"] == [] and doc["stage"] == "frame-features"
    poses = as_json(navcache("inspect", tmp / "cache/nav/train/poses", "--json"))
    assert set(poses["arrays"]) == {"poses", "frame_index", "padded", "deltas", "dist_bins", "yaw_bins", "step_valid"} and poses["counts"]["rows"] == 2 * N_EPISODES


def test_inspect_cache_root_lists_caches(built):
    tmp, cfg, _ = built
    for args in ((tmp / "cache",), ("-c", cfg)):  # explicit root, or the project's
        doc = as_json(navcache("inspect", *args, "--json"))
        assert Path(doc["cache_root"]).resolve() == (tmp / "cache").resolve()
        rows = {r["cache"]: r for r in doc["caches"]}
        assert set(rows) == {"nav/train/poses", "nav/train/frame_features"}
        assert all(r["complete"] and r["ok"] == 2 * N_EPISODES for r in rows.values())
        assert rows["nav/train/frame_features"]["spec"] == "frame_features"
    navcache("inspect", tmp / "empty-root", "--json", code=1)  # nothing to open


def test_inspect_episode_json(built):
    tmp, _, _ = built
    doc = as_json(navcache("inspect", tmp / "cache/nav/train/frame_features", "--episode", "ep001-4", "--json"))
    assert doc["episode_id"] == "ep001-4"
    a = doc["arrays"]
    assert a["cls"]["dtype"] == "float16" and a["cls"]["shape"][0] == T and len(a["cls"]["shape"]) == 2
    assert a["patch_pooled"]["shape"][:3] == [T, 2, 2]
    assert a["frame_index"]["shape"] == [T] and a["padded"]["mean"] == pytest.approx(3 / T)  # 5 frames, 3 pads
    doc = as_json(navcache("inspect", tmp / "cache/nav/train/poses", "--episode", "ep001-4", "--json"))
    assert doc["arrays"]["poses"]["shape"] == [T, 3]  # row="episode": no row axis
    missing = navcache("inspect", tmp / "cache/nav/train/poses", "--episode", "nope", "--json", code=1)
    assert "'nope'" in missing.stderr and "Traceback" not in missing.output


# ----------------------------------------------------------------------------------- verify


def test_verify_finds_a_flipped_byte_and_repair_restores_it(built, tmp_path, tiny_model):
    src, _, _ = built
    shutil.copytree(src / "cache", tmp_path / "cache")
    cfg = write_project(tmp_path, src / "data", tiny_model, part_size=2)  # same data, this copy of the cache
    cache = tmp_path / "cache/nav/train/frame_features"
    before = cache_checksums(cache)
    navcache("verify", tmp_path / "cache")

    shards = sorted(p for p in (cache / "parts/part-00001/data.zarr/cls").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert shards, "expected a zarr shard file for cls"
    raw = bytearray(shards[0].read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    shards[0].write_bytes(bytes(raw))

    r = navcache("verify", tmp_path / "cache", "--json", code=4)
    doc = as_json(r)
    assert doc["ok"] is False
    damage = doc["caches"][str(cache)]
    assert damage and all("part-00001" in d for d in damage) and any(d.startswith("corrupt_file") for d in damage)
    assert doc["caches"][str(tmp_path / "cache/nav/train/poses")] == []
    navcache("verify", cache, code=4)  # one cache folder works too

    doc = as_json(navcache("verify", tmp_path / "cache", "--repair", "-c", cfg, "--json"))
    assert doc["ok"] is True and doc["repaired"] == {str(cache): ["part-00001"]}
    assert cache_checksums(cache) == before
    navcache("verify", tmp_path / "cache")


# ----------------------------------------------------------------------------- bad options


def test_unknown_config_field_names_it_and_lists_valid_ones(tmp_path, tiny_model):
    cfg = new_project(tmp_path, tiny_model, pool=2)
    for cmd in ("extract", "status"):
        r = navcache(cmd, "-c", cfg, code=2)
        msg = r.stderr
        assert "stages.frame-features" in msg and "unknown field 'pool'" in msg, msg
        for valid in ("batch_size", "encoder", "pool_grid", "store_patch_tokens"):
            assert valid in msg
    assert not (tmp_path / "cache").exists()


def test_wrongly_typed_config_value(tmp_path, tiny_model):
    cfg = new_project(tmp_path, tiny_model, pool_grid="two")
    r = navcache("extract", "-c", cfg, "--json", code=2)
    assert "stages.frame-features.pool_grid: expected an integer, got 'two'" in r.stderr
    assert r.stdout == ""


def test_top_level_unknown_field(tmp_path, tiny_model):
    cfg = new_project(tmp_path, tiny_model)
    doc = yaml.safe_load(cfg.read_text())
    doc["cache_rot"] = "x"
    cfg.write_text(yaml.safe_dump(doc))
    r = navcache("extract", "-c", cfg, code=2)
    assert "unknown field 'cache_rot'" in r.stderr and "cache_root" in r.stderr


@pytest.mark.parametrize("shard", ["5/2", "2/2", "-1/4", "three", "1/2/3"])
def test_bad_shard_is_exit_2(tmp_path, tiny_model, shard):
    cfg = new_project(tmp_path, tiny_model)
    r = navcache("extract", "-c", cfg, "--shard", shard, code=2)
    assert "shard" in r.output.lower()
    assert not (tmp_path / "cache").exists()


def test_unknown_executor_is_exit_2(tmp_path, tiny_model):
    cfg = new_project(tmp_path, tiny_model)
    r = navcache("extract", "-c", cfg, "--executor", "spark", code=2)
    assert "executor" in r.stderr


def test_unknown_source_suggests_the_closest(tmp_path, tiny_model):
    cfg = new_project(tmp_path, tiny_model)
    doc = yaml.safe_load(cfg.read_text())
    doc["datasets"]["nav"]["source"] = "navilla"
    cfg.write_text(yaml.safe_dump(doc))
    r = navcache("extract", "-c", cfg, code=2)
    assert "datasets.nav.source: unknown source 'navilla'" in r.stderr and "did you mean 'navila'?" in r.stderr


# ------------------------------------------------------------------------------------ heads


@pytest.mark.parametrize("args, want", [
    (("train", "sim-head"), "unknown head 'sim-head' (valid: gru-motion, heatmaps, sim-heads); did you mean 'sim-heads'?"),
    (("predict", "gru-motoin", "o.jsonl", "--checkpoint", "x.pt"), "unknown head 'gru-motoin' (valid: gru-motion, heatmaps, sim-heads); did you mean 'gru-motion'?"),
    (("train", "sim-heads", "--preset", "dem"), "unknown sim-heads preset 'dem' (valid: default, demo); did you mean 'demo'?"),
    (("train", "gru-motion", "--set", "loop.lr=x"), "loop.lr: expected a number, got 'x'"),
    (("train", "gru-motion", "--set", "hiden=3"), "unknown field 'hiden' (valid: cache_root, "),
    (("train", "gru-motion", "--set", "hiden=3"), "did you mean 'hidden'?"),
    (("train", "sim-heads", "--epochs", "0"), "loop: LoopConfig.epochs must be an int >= 1, got 0"),
    (("train", "sim-heads", "--set", "noequals"), "expected KEY=VALUE"),
])
def test_head_errors_name_the_field_and_the_closest(tmp_path, monkeypatch, args, want):
    monkeypatch.chdir(tmp_path)
    r = navcache(*args, code=2)
    assert want in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []  # refused before generating the demo or training anything


def test_ensure_caches_builds_only_what_is_read_and_never_under_torchrun(tmp_path, tiny_model, monkeypatch):
    from navcache.cache_specs.errors import ConfigError, NavcacheError
    from navcache.pipeline.ensure import ensure_caches
    from navcache.pipeline.config import load_config

    project = load_config(new_project(tmp_path, tiny_model))
    needs = [("nav", "train", "poses")]
    monkeypatch.setenv("WORLD_SIZE", "2")  # every rank would build at once: refused, nothing written
    with pytest.raises(NavcacheError, match="not built"):
        ensure_caches(project, needs)
    assert not (tmp_path / "cache").exists()
    monkeypatch.delenv("WORLD_SIZE")
    ensure_caches(project, needs)
    assert (tmp_path / "cache/nav/train/poses/manifest.json").is_file()
    assert not (tmp_path / "cache/nav/train/frame_features").exists()  # only the stage that writes what is read
    monkeypatch.setenv("WORLD_SIZE", "2")
    ensure_caches(project, needs)  # complete: nothing to do on any rank
    with pytest.raises(ConfigError, match="unknown dataset 'nva'.*did you mean 'nav'"):
        ensure_caches(project, [("nva", "train", "poses")])


# ------------------------------------------------------------------------------------ shell


def test_help_lists_the_commands():
    r = navcache("--help")
    for command in ("extract", "status", "inspect", "verify", "demo-data", "train", "predict", "export"):
        assert command in r.stdout
    assert "--strict" in navcache("extract", "--help").stdout


def test_help_and_import_do_not_load_torch():
    code = "import navcache.cli, sys; print('torch' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "False", p.stdout + p.stderr
    code = "import sys, cli\ntry:\n    cli.app(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\nprint('torch' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert p.stdout.strip().splitlines()[-1] == "False" and "extract" in p.stdout
    entry = Path(sys.executable).parent / "navcache"
    if entry.exists():  # the installed console script
        p = subprocess.run([str(entry), "--help"], cwd=REPO, capture_output=True, text=True)
        assert p.returncode == 0 and "extract" in p.stdout, p.stderr
