"""flow-expert through the house's streaming loader (context caches read from disk, robot_meta held
in memory, chunks built per batch) gives the in-memory path's samples and trains as well."""
from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch

from navcache.cache_specs import open_cache
from navcache.heads.flow_expert import load_config, train_flow_expert
from navcache.heads.flow_expert.data import load_norm_stats, load_split
from navcache.heads.flow_expert.stream import choose_mode, memory_bytes, stream_split
from navcache.heads.flow_expert.train import StreamingFlowExpertTask, build_task

KEYS = ("context", "state", "actions", "is_pad", "actions_raw", "prev_action")
TWO_CAMERAS = ["demo_lerobot", "demo_lerobot_left"]


def _cfg(root, out, **kw):
    loop = {"epochs": 1, "batch_size": 32, "eval_max_batches": 2, "device": "cpu", **kw.pop("loop", {})}
    return load_config(None, "demo", cache_root=str(root), out_dir=str(out), loop=loop, **kw)


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_samples_equal_the_in_memory_ones(demo_cache_root, tmp_path, workers):
    cfg = _cfg(demo_cache_root, tmp_path, context_datasets=TWO_CAMERAS, num_workers=workers, shuffle_buffer=64)
    stats = load_norm_stats(cfg)
    arrays, info = load_split(cfg, "val", stats)
    where = {(e, f): i for i, (e, f) in enumerate(zip(info["ids"], info["frame_index"]))}
    source = stream_split(cfg, "val", stats, batch_size=13, seed=3)
    assert source.loader.modes == {"ctx0": "stream", "ctx1": "stream"}  # read from disk, not held
    seen = []
    for b in source:
        idx = torch.tensor([where[e, int(f)] for e, f in zip(b["episode_id"], b["frame_index"])])
        assert b["context"].dtype == torch.float16  # as cached: the task casts it on the device
        b["context"] = b["context"].float()
        for k in KEYS:
            assert b[k].dtype == arrays[k].dtype and torch.allclose(b[k], arrays[k][idx], rtol=0, atol=0, equal_nan=True), k
        seen += idx.tolist()
    assert sorted(seen) == list(range(info["n"]))  # every frame once
    assert seen != sorted(seen)  # shuffled
    assert source.n_samples == info["n"] and b["context"].shape[1:] == arrays["context"].shape[1:]


def test_chunks_are_built_from_the_episode_at_read_time(demo_cache_root, tmp_path):
    """The table holds one action per frame (no H copies); a chunk is the next H actions of the
    frame's episode in the cache, the last one repeated and ``is_pad`` past the episode's end."""
    H = 5
    cfg = _cfg(demo_cache_root, tmp_path, horizon=H)
    source = stream_split(cfg, "val", load_norm_stats(cfg), batch_size=64, shuffle=False)
    assert source.table.actions_raw.shape == (len(source.table.frame_index), 3)
    with open_cache(demo_cache_root, "demo_lerobot", "val", "robot_meta") as m:
        action, frames = m.load("action"), m.load("frame_index")
        span = {e: (int(a), int(n)) for e, a, n in zip(m.episodes, *m.offsets())}
    padded = 0
    for b in source:
        for j, (e, f) in enumerate(zip(b["episode_id"], b["frame_index"].tolist())):
            a, n = span[e]
            assert frames[a + f] == f  # LeRobot frames: 0..n-1
            want = [a + min(f + d, n - 1) for d in range(H)]
            assert np.array_equal(b["actions_raw"][j].numpy(), action[want])
            assert b["is_pad"][j].tolist() == [f + d >= n for d in range(H)]
            padded += int(b["is_pad"][j].any())
    assert padded == (H - 1) * len(span)  # the last H - 1 frames of every episode


def test_auto_mode_streams_over_the_budget(demo_cache_root, tmp_path):
    cfg = _cfg(demo_cache_root, tmp_path)
    stats = load_norm_stats(cfg)
    need = sum(memory_bytes(cfg, s) for s in cfg.splits)
    assert need == sum(v.numel() * v.element_size() for s in cfg.splits for v in load_split(cfg, s, stats)[0].values())
    assert choose_mode(_cfg(demo_cache_root, tmp_path, memory_budget_mb=-(-need >> 20))) == "memory"
    assert choose_mode(_cfg(demo_cache_root, tmp_path, memory_budget_mb=max(1, (need >> 20) - 1))) == ("stream" if need > 1 << 20 else "memory")
    task, info = build_task(_cfg(demo_cache_root, tmp_path, data_mode="stream"))
    mem_task, mem_info = build_task(_cfg(demo_cache_root, tmp_path, data_mode="memory"))
    assert isinstance(task, StreamingFlowExpertTask) and info["data_mode"] == "stream"
    for k in ("n_train", "n_val", "dropped", "context_tokens", "context_dim", "state_dim", "action_dim"):
        assert info[k] == mem_info[k], k
    assert np.allclose(info["mean_action"], mem_info["mean_action"], atol=1e-6)
    with pytest.raises(ValueError, match="data_mode"):
        _cfg(demo_cache_root, tmp_path, data_mode="disk")


@pytest.mark.slow
def test_stream_training_reaches_the_memory_loss_within_noise(demo_cache_root, tmp_path):
    """Two seeds a path, two epochs: the streamed run's train and val flow losses (last epoch) are
    within twice the in-memory seed spread (floored at 5 %) of the in-memory ones."""
    torch.set_num_threads(1)
    runs = {m: [train_flow_expert(_cfg(demo_cache_root, tmp_path / f"{m}{s}", data_mode=m, loop={"epochs": 2, "seed": s}))["last"]
                for s in (0, 1)] for m in ("memory", "stream")}
    for key in ("train", "val"):
        mem = [r[key]["loss"] for r in runs["memory"]]
        st = [r[key]["loss"] for r in runs["stream"]]
        noise = max(max(mem) - min(mem), 0.05 * statistics.mean(mem))  # seed spread, floored at 5 %
        print(key, "memory", mem, "stream", st)
        assert abs(statistics.mean(st) - statistics.mean(mem)) <= 2 * noise, (key, mem, st)
