"""``torchrun --nproc-per-node 2 cli.py train gru-motion`` (gloo, CPU) equals one process.

The poses cache holds front-padded records (short histories), so the two ranks' shards hold
different numbers of valid (t, t+offset) pairs. A per-rank mean loss would then make DDP optimise
a mean of per-rank means; ``heads.train_loop.global_mean`` divides by the all-reduced count, so a
full-batch DDP step is the gradient of the global mean, as in one process. Settings under which
the two runs must match (see tests/heads/test_sim_heads_ddp.py): full batch per rank, N % 2 == 0, no
dropout.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import pixel_free_poses_caches, torchrun_and_single

pytestmark = pytest.mark.slow  # real torchrun / large demo: seconds to a minute each

WORLD = 2
EPOCHS = 4


@pytest.fixture(scope="module")
def poses_caches(tmp_path_factory) -> Path:
    return pixel_free_poses_caches(tmp_path_factory.mktemp("gru_ddp_job"), scale=2, part_size=64)  # 154 train records: even


@pytest.fixture(scope="module")
def runs(poses_caches, tmp_path_factory):
    from navcache.heads.gru_motion.data import load_poses_split

    def write_config(out: Path, batch_size: int, path: Path) -> Path:
        cfg = {"cache_root": str(poses_caches), "dataset": "demo_navila", "hidden": 16, "emb_dim": 4, "dropout": 0.0,
               "predict_deltas": True, "out_dir": str(out),
               "loop": {"epochs": EPOCHS, "batch_size": batch_size, "lr": 3.0e-3, "seed": 0, "device": "cpu"}}
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    arrays, _ = load_poses_split(poses_caches, "demo_navila", "train")
    valid = arrays["step_valid"].sum(1)
    assert (valid < valid.max()).sum() >= 4  # padded records exist: ranks differ in pair counts
    return torchrun_and_single("gru-motion", write_config, len(arrays["step_valid"]), tmp_path_factory.mktemp("gru_ddp"), WORLD)


def test_both_runs_exit_0(runs):
    for name in ("ddp", "single"):
        p = runs[name]
        assert p.returncode == 0, (name, p.stdout[-3000:], p.stderr[-3000:])
    resolved = yaml.safe_load((runs["tmp"] / "ddp/config_resolved.yaml").read_text())
    assert resolved["loop"]["world_size"] == WORLD


def test_ddp_weights_equal_single_process(runs):
    assert runs["ddp"].returncode == 0, runs["ddp"].stderr[-3000:]
    a = torch.load(runs["tmp"] / "ddp/checkpoints/last.pt", weights_only=True)
    b = torch.load(runs["tmp"] / "single/checkpoints/last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == EPOCHS and set(a["model"]) == set(b["model"])
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], rtol=1e-4, atol=2e-6), (k, (a["model"][k] - b["model"][k]).abs().max())


def test_exported_encoders_agree(runs):
    from navcache.heads.gru_motion import MotionEncoder

    assert runs["ddp"].returncode == 0, runs["ddp"].stderr[-3000:]
    ea = MotionEncoder.from_pretrained(runs["tmp"] / "ddp/export")
    eb = MotionEncoder.from_pretrained(runs["tmp"] / "single/export")
    g = torch.Generator().manual_seed(0)
    deltas = torch.randn(3, 7, 3, generator=g)
    dist_bins, yaw_bins = torch.randint(0, 5, (3, 7), generator=g), torch.randint(0, 9, (3, 7), generator=g)
    valid = torch.ones(3, 7, dtype=torch.bool)
    valid[0, :3] = False
    with torch.no_grad():
        torch.testing.assert_close(ea(deltas, dist_bins, yaw_bins, valid), eb(deltas, dist_bins, yaw_bins, valid), rtol=1e-4, atol=2e-6)
