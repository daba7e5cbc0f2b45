"""``navcache inspect <cache> --episode E --plot DIR`` with a covisibility cache: the ground truth drawn
as the seed's outputs, from caches plus the source's frames, on the pan tour (a view turned left)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from navcache.cache_specs import open_cache
from navcache.cache_specs.covisibility_pictures import BAR_RGB, GAUGE_RGB, heatmaps_layout
from navcache.pipeline.commands import EXIT_OK, inspect_cmd
from navcache.pipeline.config import config_from_dict
from navcache.pipeline.runner import ExtractOptions, extract
from tests.pipeline.test_covisibility import pan_poses, room, write_tour

TOUR = [0, 5, 10, 15]  # frames of the pan tour: 0, +60 (turned left), 0, -60 degrees


@pytest.mark.slow
def test_inspect_plot_draws_the_covisibility_ground_truth(tmp_path, monkeypatch):
    write_tour(tmp_path / "videos/train", "pan", room(), pan_poses()[TOUR])
    cfg = {"cache_root": str(tmp_path / "cache"),
           "datasets": {"pans": {"source": "videos", "root": str(tmp_path / "videos"), "splits": ["train"],
                                 "stages": ["geometry", "keyframes", "covisibility"], "options": {"num_frames": 128}}},
           "stages": {"geometry": {"provider": "gt", "image_size": [128, 128], "stride": 4},
                      "keyframes": {"strategy": "uniform", "num_keyframes": 4}, "covisibility": {"grid": 8}}}
    (tmp_path / "navcache.yaml").write_text(json.dumps(cfg))
    project = config_from_dict(cfg, tmp_path)
    assert not extract(project, ExtractOptions("train")).errors
    monkeypatch.chdir(tmp_path)
    cov_dir = Path(project.cache_root) / "pans/train/covisibility"
    assert inspect_cmd(cov_dir, None, False, "pan", tmp_path / "plots") == EXIT_OK

    keys = open_cache(project.cache_root, "pans", "train", "keyframes")["pan"]
    geo = open_cache(project.cache_root, "pans", "train", "geometry")["pan"]
    assert keys["frame_index"].tolist() == [0, 1, 2, 3]
    plots = tmp_path / "plots"
    assert {"pan.sheet.png", "pan_heatmaps.png", "pan_heatmap_3.png", "pan_summary.json"} <= set(p.name for p in plots.iterdir())
    summary = json.loads((plots / "pan_summary.json").read_text())
    assert summary["keyframes"] == [0, 1, 2, 3] and summary["grid"] == 8 and summary["pairs"] == 12
    with np.load(plots / "pan_geometry_info.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["extrinsic"], geo["extrinsic"][keys["position"]])
    # the seed's example: keyframe 1 (turned 60 degrees left) lies left of keyframe 0's view, and
    # keyframe 3 (turned right) right of it
    img = cv2.imread(str(plots / "pan_heatmaps.png"))[..., ::-1]
    lay = heatmaps_layout(4, 128, 128, ("target",))

    def bar(a, b, side):
        x0, y0, x1, y1 = lay.panels[(a, b, "target")].bars[side]
        return tuple(int(v) for v in img[(y0 + y1) // 2, (x0 + x1) // 2])

    assert bar(0, 1, "left") == BAR_RGB and bar(0, 1, "right") == GAUGE_RGB
    assert bar(0, 3, "right") == BAR_RGB and bar(0, 3, "left") == GAUGE_RGB
