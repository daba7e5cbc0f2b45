"""Models are checked once, before any work, and a missing one fails in one clear line.

The network is blocked here, so only the offline path (HF_HUB_OFFLINE=1, set by conftest), local
folders and the local hub cache are tested; the hub reachability request is not.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from navcache import cli
from navcache.pipeline.encoders.weights import check_model
from navcache.pipeline.errors import NavcacheError
from tests.helpers import REPO, make_navila, run_cli, write_project
from tests.standins.vggt_standin import make_standin

MISSING = "navcache-tests/no-such-model"
FIELD = "stages.frame-features.encoder.model"


def navcache(*args):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


@pytest.fixture()
def missing_model_project(tmp_path) -> Path:
    """Two datasets whose frame-features encoder is a hub id that is nowhere on this machine."""
    make_navila(tmp_path / "data", n_episodes=2)
    cfg_path = write_project(tmp_path, tmp_path / "data", Path(MISSING))
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["stages"]["frame-features"]["encoder"]["model"] = MISSING
    cfg["datasets"]["again"] = {**cfg["datasets"]["nav"]}
    cfg_path.write_text(yaml.safe_dump(cfg))
    return cfg_path


def _offline_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


# -- check_model --------------------------------------------------------------------------------

def test_local_folder_is_found(tiny_model):
    assert check_model(str(tiny_model), None, FIELD) == "folder"


def test_missing_folder_names_the_field(tmp_path):
    with pytest.raises(NavcacheError) as e:
        check_model(str(tmp_path / "not-here" / "model"), None, FIELD)
    assert FIELD in str(e.value) and "neither an existing folder nor a hub id" in str(e.value)


def test_offline_hub_id_fails_with_the_hint_and_is_asked_once():
    seen: dict = {}
    with pytest.raises(NavcacheError) as e:
        check_model(MISSING, None, FIELD, seen)
    msg = str(e.value)
    assert FIELD in msg and repr(MISSING) in msg and "HF_HUB_OFFLINE=1" in msg and "\n" not in msg
    assert seen[(MISSING, None)] is e.value  # a second dataset gets the same answer without asking again
    with pytest.raises(NavcacheError) as again:
        check_model(MISSING, None, FIELD, seen)
    assert again.value is e.value


def test_a_snapshot_in_the_local_hub_cache_is_found_offline(tmp_path):
    """The hub cache's own layout (models--org--name/refs/main -> snapshots/<commit>/), read by
    huggingface_hub in a process whose HF_HUB_CACHE points here."""
    repo = tmp_path / "hub" / "models--navcache-tests--cached"
    commit = "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = "from navcache.pipeline.encoders.weights import check_model; print(check_model('navcache-tests/cached', None, 'f'))"
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       env={**_offline_env(), "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "hub cache"


# -- through the command line ---------------------------------------------------------------------

@pytest.mark.parametrize("args", [("extract",), ("extract", "--dry-run"), ("status",)])
def test_unreachable_model_fails_fast_in_one_line(missing_model_project, args):
    p = subprocess.run([sys.executable, str(REPO / "cli.py"), *args, "-c", str(missing_model_project)],
                       cwd=missing_model_project.parent, capture_output=True, text=True, env=_offline_env())
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    # one error per dataset (a long one wraps), each naming the field, the id and the hint
    errors = " ".join(out.split()).split("error dataset ")[1:]
    assert len(errors) == 2, out
    assert all(FIELD in e and repr(MISSING) in e and "HF_HUB_OFFLINE=1" in e for e in errors), out
    assert "retry" not in out.lower() and "Traceback" not in out, out
    assert not (missing_model_project.parent / "cache" / "nav" / "train" / "frame_features").exists()


def test_dry_run_json_carries_the_error(missing_model_project):
    r = navcache("extract", "--dry-run", "--json", "-c", missing_model_project)
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert len(doc["errors"]) == 2 and all(FIELD in e for e in doc["errors"]) and doc["plan"] == []


def test_debug_shows_the_traceback(missing_model_project):
    quiet = run_cli("extract", "--dry-run", "-c", str(missing_model_project), cwd=missing_model_project.parent, check=False)
    loud = run_cli("--debug", "extract", "--dry-run", "-c", str(missing_model_project), cwd=missing_model_project.parent, check=False)
    assert quiet.returncode == loud.returncode == 1
    assert "Traceback" not in quiet.stdout + quiet.stderr
    assert "Traceback" in loud.stderr and "NavcacheError" in loud.stderr and FIELD in loud.stderr


def test_a_configuration_error_is_one_line(tmp_path):
    """An invalid project file: exit 2, the field named, no traceback."""
    bad = tmp_path / "navcache.yaml"
    bad.write_text("datasets: {nav: {source: navila, root: x, splits: [train], stages: [poses]}}\nbogus_field: 1\n")
    quiet = run_cli("status", "-c", str(bad), cwd=tmp_path, check=False)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr and "bogus_field" in quiet.stderr


# -- the VGGT provider ------------------------------------------------------------------------------

def _vggt_project(tmp_path: Path, demo_world: Path, model_class: str) -> Path:
    cfg = {
        "cache_root": str(tmp_path / "cache"),
        "datasets": {"tours": {"source": "videos", "root": str(demo_world / "videos"), "splits": ["train"],
                               "stages": ["geometry"], "options": {"num_frames": 4}}},
        "stages": {"geometry": {"provider": "vggt", "image_size": [518, 518], "stride": 14,
                                "vggt": {"model": str(make_standin(tmp_path / "vggt")), "model_class": model_class}}},
    }
    path = tmp_path / "navcache.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_dry_run_reports_a_vggt_class_that_cannot_be_imported(tmp_path, demo_world):
    project = _vggt_project(tmp_path, demo_world, "no_such_vggt_package.models:VGGT")
    for args in (("extract", "--dry-run"), ("status",)):
        r = navcache(*args, "-c", project)
        assert r.exit_code == 1, r.output
        assert "stages.geometry.vggt.model_class" in r.output and "no_such_vggt_package" in r.output, r.output
        assert "pip install git+https://github.com/facebookresearch/vggt" in r.output.replace("\n", ""), r.output


def test_dry_run_reports_a_missing_class_in_an_importable_module(tmp_path, demo_world):
    r = navcache("extract", "--dry-run", "-c", _vggt_project(tmp_path, demo_world, "tests.standins.vggt_standin:NoSuchClass"))
    assert r.exit_code == 1 and "has no class 'NoSuchClass'" in r.output, r.output


def test_dry_run_passes_with_an_importable_vggt(tmp_path, demo_world):
    r = navcache("extract", "--dry-run", "--json", "-c", _vggt_project(tmp_path, demo_world, "tests.standins.vggt_standin:StandInVGGT"))
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["errors"] == [] and [p["stage"] for p in doc["plan"]] == ["geometry"]
