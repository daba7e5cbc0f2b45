"""docs/inspect_caches.ipynb runs top to bottom in a real Jupyter kernel (nbclient) on the demo world."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"

pytestmark = pytest.mark.slow


def _outputs(nb, mime: str) -> list[str]:
    return [o["data"][mime] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if mime in o.get("data", {})]


def test_notebook_is_the_generated_one():
    """The committed notebook equals what docs/make_notebook.py writes (no hand edits drift away)."""
    import importlib.util

    import nbformat

    spec = importlib.util.spec_from_file_location("make_notebook", DOCS / "make_notebook.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    def cells(nb):
        return [(c.cell_type, c.source) for c in nb.cells]

    assert cells(mod.build()) == cells(nbformat.read(DOCS / "inspect_caches.ipynb", as_version=4)), "run python docs/make_notebook.py"


def test_notebook_runs_on_the_demo(tmp_path: Path, demo_caches: Path, monkeypatch):
    """In a copy of the session's demo folder: its caches are up to date, the notebook's extract builds nothing."""
    import nbformat
    from nbclient import NotebookClient

    shutil.copytree(demo_caches, tmp_path, dirs_exist_ok=True, symlinks=True)
    nb = nbformat.read(DOCS / "inspect_caches.ipynb", as_version=4)
    monkeypatch.setenv("NAVCACHE_WORKDIR", str(tmp_path))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    html = _outputs(nb, "text/html")
    summaries = [h for h in html if "<b>navcache</b>" in h]
    assert len(summaries) >= 7, "one HTML card per demo cache (poses, frame features x3, rover_meta, geometry, keyframes)"
    assert any("RANDOM-INIT" in h for h in summaries), "the demo encoder's random_init provenance is shown"
    assert len(_outputs(nb, "image/png")) >= 4, "poses plot, keyframe sheet, top-down view and training curves"
    assert (tmp_path / "runs" / "sim-heads-notebook" / "metrics" / "val_metrics.jsonl").exists()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert os.listdir(tmp_path / "plots")
