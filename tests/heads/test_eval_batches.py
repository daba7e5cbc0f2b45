"""Evaluation forwards a bounded number of bounded batches, never a whole split at once, and scores
the same as before: the in-memory SIM heads and GRU motion tasks through the loop's ``evaluate_split``."""
from __future__ import annotations

import pytest
import torch

from navcache.heads.batches import evaluate_split
from navcache.heads.gru_motion import GruMotionConfig
from navcache.heads.gru_motion.train import GruMotionTask
from navcache.heads.train_loop import LoopConfig


def _forward_sizes(model: torch.nn.Module) -> tuple[list[int], object]:
    sizes: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])))
    return sizes, handle


def _motion_arrays(n: int, steps: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(n, steps, generator=g) > 0.2
    dist = torch.randint(0, 4, (n, steps), generator=g).masked_fill(~valid, -100)
    yaw = torch.randint(0, 5, (n, steps), generator=g).masked_fill(~valid, -100)
    return {"deltas": torch.randn(n, steps, 3, generator=g), "dist_bins": dist, "yaw_bins": yaw, "step_valid": valid}


def test_gru_motion_evaluation_is_batched_and_bounded():
    cfg = GruMotionConfig(hidden=8, emb_dim=4, loop=LoopConfig(batch_size=16, device="cpu"))
    task = GruMotionTask(cfg, _motion_arrays(50, 6, 0), _motion_arrays(37, 6, 1), n_dist=4, n_yaw=5)
    task.model.eval()
    with torch.no_grad():
        whole = task._metrics(task._forward(task.model, task.val_arrays), task.val_arrays)  # one pass, for reference
    sizes, h = _forward_sizes(task.model)
    with torch.no_grad():
        m = evaluate_split(task, task.model, "val", 16, 0)
    assert sizes == [16, 16, 5]
    assert m == pytest.approx(whole, rel=1e-5, abs=1e-6)
    sizes.clear()
    with torch.no_grad():
        evaluate_split(task, task.model, "train", 16, 2)
    assert sizes == [16, 16]  # eval_max_batches bounds the batches
    sizes.clear()
    task.evaluate(task.model, task.val_arrays)
    assert max(sizes) <= 16
    h.remove()


def test_sim_heads_evaluation_is_batched_and_bounded(demo_cache_root, tmp_path):
    from navcache.heads.sim_heads import SimHeadsConfig
    from navcache.heads.sim_heads.train import SimHeadsTask, build_task

    cfg = SimHeadsConfig(cache_root=str(demo_cache_root), out_dir=str(tmp_path), data_mode="memory",
                         loop=LoopConfig(batch_size=32, device="cpu"))
    task, _ = build_task(cfg)
    assert isinstance(task, SimHeadsTask)
    task.model.eval()
    n = len(task.val_arrays["risk"])
    with torch.no_grad():
        v = task.val_arrays
        whole = task.metrics(task.model(v["vis_feats"], v["telemetry"]), v)
    sizes, h = _forward_sizes(task.model)
    with torch.no_grad():
        m = evaluate_split(task, task.model, "val", 32, 0)
    assert max(sizes) <= 32 and sum(sizes) == n
    assert m == pytest.approx(whole, rel=1e-4, abs=1e-5)
    sizes.clear()
    with torch.no_grad():
        evaluate_split(task, task.model, "val", 32, 1)
    assert sizes == [32]
    h.remove()
