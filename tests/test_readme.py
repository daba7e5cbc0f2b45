"""The README's example project file is a valid configuration (it is what people copy first)."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from navcache.pipeline.config import config_from_dict

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_project_file_is_valid(tmp_path):
    block = re.search(r"```yaml\n# navcache.yaml\n(.*?)```", README.read_text(), re.S).group(1)
    cfg = config_from_dict(yaml.safe_load(block), tmp_path)
    assert set(cfg.datasets) == {"r2r", "rover", "scans"}
    assert cfg.stage_settings("frame-features", "scans").frames_from == "keyframes"
    assert cfg.stage_settings("frame-features", "r2r").frames_from == "source"
    geo = cfg.stage_settings("geometry", "scans")
    assert geo.provider == "vggt" and geo.vggt.keep_tokens and geo.stride == 4


def test_readme_python_snippets_run_on_the_demo_caches(demo_caches, monkeypatch, capsys):
    """Every ```python block of the README runs as written, in a folder holding the demo's caches."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(demo_caches)
    for block in blocks:
        scope: dict = {}
        exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - our own documentation
    assert "feats:" in capsys.readouterr().out  # the join report printed by the loader snippet
