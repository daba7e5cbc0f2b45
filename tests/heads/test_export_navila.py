"""The NaVILA pose sidecar, read back with the integration guide's own consumer logic."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from typer.testing import CliRunner

from navcache.cache_specs import open_cache
from navcache.cli import export_for_dataset
from navcache.pipeline.config import load_config
from tests.helpers import make_navila, write_project


GUIDE = Path(__file__).resolve().parents[2] / "docs" / "navila_integration.md"


def guide_namespace() -> dict:
    """Every ``python`` block of the integration guide, run in order in one namespace."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert len(blocks) >= 4, "the guide lost its code blocks"
    ns: dict = {}
    exec(compile("\n".join(blocks), str(GUIDE), "exec"), ns)
    return ns


def guide_consumer(path):
    """What the integration guide does: dict by video_id, np.array(float32/int64), collate by stacking."""
    g = guide_namespace()
    pose_data = g["load_pose_sidecar"](path)
    batch = g["collate_poses"]([g["pose_fields"](pose_data[vid]) for vid in sorted(pose_data)])
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


def test_guide_loss_ignores_padded_steps(tmp_path, tiny_model):
    """Padded steps (and the step from padding to the first real frame) carry -100, so the guide's
    loss is the same whatever the model predicts there; the sidecar adds step_valid."""
    data = make_navila(tmp_path / "data", n_episodes=3)  # the "-4" ids have 5 frames: 3 padding rows at T=8
    project = load_config(write_project(tmp_path, data, tiny_model))
    out = tmp_path / "gru_pose_train.jsonl"
    export_for_dataset(project, "nav", "train", out)
    pose_data, batch = guide_consumer(out)
    ids = sorted(pose_data)
    valid = torch.tensor([pose_data[v]["step_valid"] for v in ids])
    assert valid.dtype == torch.bool and not valid.all() and valid.any(1).all()
    padded = torch.tensor([[f < 0 for f in open_cache(project.cache_root, "nav", "train", "poses")[v]["frame_index"]] for v in ids])
    assert padded.any(), "the fixture must hold padded samples"
    assert torch.equal(valid, ~padded[:, :-1] & ~padded[:, 1:])  # padding -> first real frame is invalid too
    for k in ("dist_bins", "yaw_bins"):
        assert batch[k].dtype == torch.int64
        assert (batch[k][~valid] == -100).all() and (batch[k][valid] >= 0).all()

    g = guide_namespace()
    gen = torch.Generator().manual_seed(0)
    B, S = batch["dist_bins"].shape
    dist_logits, yaw_logits = torch.randn(B, S, 5, generator=gen), torch.randn(B, S, 9, generator=gen)
    base = g["motion_loss"](dist_logits, yaw_logits, batch["dist_bins"], batch["yaw_bins"])
    assert torch.isfinite(base) and base > 0
    # whatever the logits on padded steps, the loss does not move
    pad = (~valid).unsqueeze(-1)
    for scale in (100.0, -100.0):
        d2 = torch.where(pad, scale * torch.randn(B, S, 5, generator=gen), dist_logits)
        y2 = torch.where(pad, scale * torch.randn(B, S, 9, generator=gen), yaw_logits)
        torch.testing.assert_close(g["motion_loss"](d2, y2, batch["dist_bins"], batch["yaw_bins"]), base, rtol=0, atol=0)
    # and it equals the mean cross-entropy over the real steps alone
    want = (torch.nn.functional.cross_entropy(dist_logits[valid], batch["dist_bins"][valid], reduction="sum")
            + torch.nn.functional.cross_entropy(yaw_logits[valid], batch["yaw_bins"][valid], reduction="sum")) / valid.sum()
    torch.testing.assert_close(base, want)
    # a batch of padded steps only: zero, not NaN
    only_pad = torch.full((1, S), -100, dtype=torch.int64)
    assert float(g["motion_loss"](dist_logits[:1], yaw_logits[:1], only_pad, only_pad)) == 0.0
