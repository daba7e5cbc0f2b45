"""The README's example project file is a valid configuration (it is what people copy first)."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from pipeline.config import config_from_dict

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_project_file_is_valid(tmp_path):
    block = re.search(r"```yaml\n# navcache.yaml\n(.*?)```", README.read_text(), re.S).group(1)
    cfg = config_from_dict(yaml.safe_load(block), tmp_path)
    assert set(cfg.datasets) == {"r2r", "rover", "scans"}
    assert cfg.stage_settings("frame-features", "scans").frames_from == "keyframes"
    assert cfg.stage_settings("frame-features", "r2r").frames_from == "source"
    geo = cfg.stage_settings("geometry", "scans")
    assert geo.provider == "vggt" and geo.vggt.keep_tokens and geo.stride == 4
