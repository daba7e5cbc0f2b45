"""A ``demo-data --no-pixels`` folder is the user's: commands run on it as it is (the poses it can
build), say what it lacks and the command that adds it, and never regenerate it with pixels."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run_cli

SCALE = "0.05"


def fingerprint(demo: Path) -> dict[str, int]:
    """Every file of the demo world (the tiny encoder aside) and its size."""
    return {str(p.relative_to(demo)): p.stat().st_size for p in demo.rglob("*") if p.is_file() and "models" not in p.parts}


@pytest.fixture(scope="module")
def lean(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("lean")
    run_cli("demo-data", "navcache_demo", "--scale", SCALE, "--no-pixels", cwd=cwd)
    assert json.loads((cwd / "navcache_demo" / "demo_info.json").read_text())["pixels"] is False
    return cwd


def assert_untouched(cwd: Path, before: dict) -> None:
    demo = cwd / "navcache_demo"
    assert fingerprint(demo) == before
    assert json.loads((demo / "demo_info.json").read_text())["pixels"] is False
    assert not list(demo.rglob("*.jpg")) and not list(demo.rglob("*.mp4"))


def assert_says_what_is_missing(text: str) -> None:
    text = " ".join(text.split())  # rich wraps long lines
    assert "has no pixels" in text and "demo_rover" in text and "demo_tours" in text, text
    assert f"navcache demo-data navcache_demo --scale {SCALE}" in text or f"--scale {SCALE}" in text, text


def test_extract_only_poses_builds_poses_and_leaves_the_folder_alone(lean):
    before = fingerprint(lean / "navcache_demo")
    p = run_cli("extract", "--only", "poses", "--json", cwd=lean)
    assert_untouched(lean, before)
    assert_says_what_is_missing(p.stdout + p.stderr)
    summary = json.loads(p.stdout[p.stdout.index("{"):])
    built = {(s["dataset"], s["stage"]) for s in summary["stages"]}
    assert built == {("demo_navila", "poses")} and not summary["errors"], summary
    assert (lean / "navcache_cache" / "demo_navila" / "train" / "poses" / "manifest.json").is_file()


def test_export_uses_the_pixel_free_demo_as_it_is(lean):
    before = fingerprint(lean / "navcache_demo")
    p = run_cli("export", "navila-poses", "poses_val.jsonl", "-d", "demo_navila", "-s", "val", cwd=lean)
    assert_untouched(lean, before)
    assert_says_what_is_missing(p.stdout + p.stderr)
    report = json.loads(p.stdout[p.stdout.index("{\n"):])
    assert report["records"] > 0 and len((lean / "poses_val.jsonl").read_text().splitlines()) == report["records"]


def test_asking_for_what_it_lacks_is_a_clear_error(lean):
    before = fingerprint(lean / "navcache_demo")
    p = run_cli("extract", "--only", "frame-features", cwd=lean, check=False)
    assert p.returncode == 2
    assert "frame-features" in p.stderr and "poses" in p.stderr
    assert_says_what_is_missing(p.stdout + p.stderr)
    assert_untouched(lean, before)
