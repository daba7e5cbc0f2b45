"""The layers hold, as checked by import-linter (`lint-imports`, contracts in pyproject.toml):
cli.py > (pipeline | heads, independent) > cache_specs, and nothing in the library imports cli.

Each contract is also shown to fail: a copy of the package tree with one forbidden import added."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGES = ("pipeline", "heads", "cache_specs")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "lint-imports"
    assert exe.exists(), "lint-imports not installed: pip install -e '.[test]'"
    env = {**os.environ, "PYTHONPATH": str(cwd)}  # the tree under cwd, not the installed one
    return subprocess.run([str(exe)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_repository_keeps_its_layers():
    p = lint_imports(REPO)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "2 kept, 0 broken" in p.stdout, p.stdout[-2000:]


@pytest.mark.parametrize(
    "module, source, contract",
    [
        ("heads/_bad.py", "from navcache.pipeline.runner import extract\n", "pipeline | heads (independent)"),
        ("pipeline/_bad.py", "import navcache.heads.registry\n", "pipeline | heads (independent)"),
        ("cache_specs/_bad.py", "from navcache.heads import registry\n", "> cache_specs"),
        ("pipeline/_bad.py", "def f():\n    from navcache import cli  # lazily: still an import\n", "nothing in the library imports cli"),
        ("heads/_bad.py", "from navcache.cli import app\n", "nothing in the library imports cli"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, source, contract):
    pkg_root = tmp_path / "navcache"  # the installed layout: navcache/{__init__,cli}.py + the packages
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, pkg_root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("__init__.py", "cli.py"):
        shutil.copy(REPO / f, pkg_root / f)
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    assert lint_imports(tmp_path).returncode == 0  # the copy as it is: kept
    (pkg_root / module).write_text(source)
    p = lint_imports(tmp_path)
    assert p.returncode != 0, p.stdout[-3000:]
    bad = "navcache." + module.removesuffix(".py").replace("/", ".")
    assert bad in p.stdout and f"{contract}" in p.stdout and "BROKEN" in p.stdout, p.stdout[-3000:]


def test_every_registered_head_has_the_kit():
    from navcache.cache_specs.specs import SPECS
    from navcache.heads.registry import HEADS, get

    assert HEADS and list(HEADS) == sorted(HEADS)
    for name, module in HEADS.items():
        folder = REPO / Path(*module.split(".")[1:])  # navcache.heads.x -> heads/x
        for f in ("configuration.py", "data.py", "model.py", "train.py", "predict.py"):
            assert (folder / f).is_file(), (name, f)
        head = get(name)
        assert {"demo", "default"} <= set(head.PRESETS), name
        assert all(isinstance(c, head.Config) for c in head.PRESETS.values()), name
        assert head.READS and set(head.READS) <= set(SPECS), name
        assert head.load_config() == head.PRESETS["demo"], name
        for fn in ("train_head", "read_checkpoint", "predict_split"):
            assert callable(getattr(head, fn)), (name, fn)
