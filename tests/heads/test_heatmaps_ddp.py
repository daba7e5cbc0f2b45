"""``torchrun --nproc-per-node 2 cli.py train heatmaps`` (gloo, CPU) equals one process, with the
demo preset's frozen random-init Qwen2 between fusion and decoder and the upsampling loss on.

The model is called through the DDP wrapper with the keyframes' pooled grid features (dicts), so
this checks that the gradients of everything trainable (encoder, fusion, LLM projections, mask
head) are averaged over the ranks and the frozen LLM stays out of the optimiser on every rank.
Settings under which the runs must match: a full batch per rank, an even number of train pairs,
no dropout.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import torchrun_and_single

pytestmark = pytest.mark.slow  # real torchrun over the demo glances: ~a minute

WORLD = 2
EPOCHS = 2


@pytest.fixture(scope="module")
def runs(demo_cache_root, tmp_path_factory):
    from navcache.heads.heatmaps.data import load_split

    def write_config(out: Path, batch_size: int, path: Path) -> Path:
        cfg = {"cache_root": str(demo_cache_root), "dataset": "demo_heatmaps", "llm": "random-qwen2", "d_model": 32, "dropout": 0.0,
               "out_dir": str(out), "loop": {"epochs": EPOCHS, "batch_size": batch_size, "lr": 2.0e-3, "seed": 0, "device": "cpu"}}
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    n = len(load_split(demo_cache_root, "demo_heatmaps", "train", "demo_heatmaps_vggt")[0]["a"])
    return torchrun_and_single("heatmaps", write_config, n, tmp_path_factory.mktemp("heatmaps_ddp"), WORLD)


def test_ddp_weights_equal_single_process(runs):
    for name in ("ddp", "single"):
        assert runs[name].returncode == 0, (name, runs[name].stdout[-3000:], runs[name].stderr[-3000:])
    assert yaml.safe_load((runs["tmp"] / "ddp/config_resolved.yaml").read_text())["loop"]["world_size"] == WORLD
    a = torch.load(runs["tmp"] / "ddp/checkpoints/last.pt", weights_only=True)
    b = torch.load(runs["tmp"] / "single/checkpoints/last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == EPOCHS and set(a["model"]) == set(b["model"])
    assert not any(k.startswith("llm.") for k in a["model"])  # the frozen LLM is never saved as trained weights
    moved = 0
    # readout.1.bias adds one constant to every cell's logit, which the softmax ignores: its gradient
    # is 0 up to rounding, and Adam scales that rounding to lr-sized steps that differ between runs
    for k in sorted(set(a["model"]) - {"readout.1.bias"}):
        assert torch.allclose(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-5), (k, (a["model"][k] - b["model"][k]).abs().max())
        moved += int(k.startswith(("llm_in.", "mask_head.")))
    assert moved >= 4  # the LLM's projections and the mask head are among the compared, trained weights
