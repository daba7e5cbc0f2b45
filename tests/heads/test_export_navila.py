"""The NaVILA pose sidecar, read back with the integration guide's own consumer logic."""
from __future__ import annotations

import json

import numpy as np
import torch
from typer.testing import CliRunner

from navcache.cache_specs import open_cache
from navcache.cli import export_for_dataset
from navcache.pipeline.config import load_config
from tests.helpers import make_navila, write_project


def guide_consumer(path):
    """What the integration guide does: dict by video_id, np.array(float32/int64), collate by stacking."""
    pose_data = {}
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            pose_data[record["video_id"]] = record
    items = []
    for vid in sorted(pose_data):
        r = pose_data[vid]
        items.append(
            {
                "poses": np.array(r["poses"], dtype=np.float32),
                "deltas": np.array(r["deltas"], dtype=np.float32),
                "dist_bins": np.array(r["dist_bins"], dtype=np.int64),
                "yaw_bins": np.array(r["yaw_bins"], dtype=np.int64),
            }
        )
    batch = {k: torch.stack([torch.from_numpy(it[k]) for it in items], dim=0) for k in items[0]}
    return pose_data, batch


def test_export_round_trips_through_the_guide_consumer(tmp_path, tiny_model):
    data = make_navila(tmp_path / "data", n_episodes=5)
    poses = json.loads((data / "poses_train.json").read_text())
    poses["ep001-4"][2] = [float("nan"), 0, 0]  # quarantined in the poses cache: reported, not exported
    poses["orphan-1"] = [[0, 0, 0]]
    (data / "poses_train.json").write_text(json.dumps(poses))
    project = load_config(write_project(tmp_path, data, tiny_model, part_size=3))
    out = tmp_path / "gru_pose_train.jsonl"
    report = export_for_dataset(project, "nav", "train", out)
    pose_data, batch = guide_consumer(out)
    assert report.records == len(pose_data) == 9
    assert report.annotations_without_poses == ["ep001-4"]
    assert batch["poses"].shape == (9, 8, 3) and batch["deltas"].shape == (9, 7, 3)
    assert batch["dist_bins"].shape == batch["yaw_bins"].shape == (9, 7) and batch["dist_bins"].dtype == torch.int64
    c = open_cache(project.cache_root, "nav", "train", "poses")
    for i, vid in enumerate(sorted(pose_data)):
        np.testing.assert_allclose(batch["deltas"][i].numpy(), c[vid]["deltas"], atol=1e-6)
        assert (batch["yaw_bins"][i].numpy() == c[vid]["yaw_bins"]).all()
    assert not list(tmp_path.glob(".tmp-*")), "temporary export file left behind"


def test_cli_export(tmp_path, tiny_model):
    from navcache import cli
    data = make_navila(tmp_path / "data", n_episodes=2)
    cfg = write_project(tmp_path, data, tiny_model)
    r = CliRunner().invoke(cli.app, ["export", "navila-poses", str(tmp_path / "out.jsonl"), "-d", "nav", "-s", "train", "-c", str(cfg)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["records"] == 4
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 4
    r = CliRunner().invoke(cli.app, ["export", "navila-poses", str(tmp_path / "x.jsonl"), "-d", "nope", "-c", str(cfg)])
    assert r.exit_code == 2 and "unknown dataset" in r.output
