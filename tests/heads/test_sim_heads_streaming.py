"""SIM heads through the streaming path (caches read block by block from disk, as for splits larger
than RAM) reach the same val metrics as the in-memory path, within noise, and read the same samples."""
from __future__ import annotations

import statistics

import pytest
import torch

from navcache.heads.sim_heads import SimHeadsConfig, train_sim_heads
from navcache.heads.sim_heads.data import choose_mode, load_split, normalise_telemetry, split_bytes, stream_split
from navcache.heads.sim_heads.train import StreamingSimHeadsTask, build_task
from navcache.heads.train_loop import LoopConfig

HEADS = ("risk", "reason", "action")
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def rover_caches(demo_cache_root):
    return demo_cache_root  # built once per test session (tests/conftest.py)


def _cfg(caches, out, mode, seed=0, epochs=30, **kw):
    loop = LoopConfig(epochs=epochs, batch_size=32, lr=3e-3, seed=seed, device="cpu")
    return SimHeadsConfig(cache_root=str(caches), out_dir=str(out), loop=loop, data_mode=mode, **kw)


def test_streamed_samples_equal_the_in_memory_ones(rover_caches):
    arrays, info = load_split(rover_caches, "demo_rover", "val")
    stats = load_split(rover_caches, "demo_rover", "train")[1]["telemetry_stats"]
    arrays["telemetry"] = normalise_telemetry(arrays["telemetry"], stats)
    pos = {e: i for i, e in enumerate(info["episodes"])}
    loader = stream_split(rover_caches, "demo_rover", "val", stats, batch_size=7, seed=3, num_workers=2, shuffle_buffer=16)
    seen = []
    for b in loader:
        idx = torch.tensor([pos[e] for e in b["episode_id"]])
        for k in ("vis_feats", "telemetry", "risk", "reason", "action", "weight"):
            assert torch.equal(b[k], arrays[k][idx]), k
        seen += b["episode_id"]
    assert sorted(seen) == sorted(info["episodes"])  # every clip once
    assert seen != info["episodes"]  # shuffled


def test_auto_mode_streams_over_the_budget(rover_caches, tmp_path):
    need = sum(split_bytes(rover_caches, "demo_rover", s) for s in ("train", "val"))
    assert need == sum(v.numel() * v.element_size() for s in ("train", "val") for v in load_split(rover_caches, "demo_rover", s)[0].values())
    assert choose_mode("auto", rover_caches, "demo_rover", ("train", "val"), need) == "memory"
    assert choose_mode("auto", rover_caches, "demo_rover", ("train", "val"), need - 1) == "stream"
    budget_mb = max(1, need // 2 >> 20)  # the demo is a few MB: half of it, rounded down
    task, info = build_task(_cfg(rover_caches, tmp_path, "auto", memory_budget_mb=budget_mb, epochs=1))
    assert (info["data_mode"] == "stream") == (need > budget_mb << 20)
    task, info = build_task(_cfg(rover_caches, tmp_path, "stream", epochs=1))
    assert isinstance(task, StreamingSimHeadsTask) and info["n_train"] == 240 and info["n_val"] == 80


@pytest.mark.slow
def test_streaming_training_matches_in_memory_within_noise(rover_caches, tmp_path):
    runs = {m: [train_sim_heads(_cfg(rover_caches, tmp_path / f"{m}{s}", m, seed=s))["last"]["val"] for s in SEEDS] for m in ("memory", "stream")}
    for m, vals in runs.items():
        for v in vals:
            assert v["n"] == 80
            for h in ("risk", "action"):  # the heads' learning signal holds on both paths
                assert v[f"{h}_accuracy"] >= v[f"base_majority_{h}_accuracy"] + 0.05, (m, h, v)
    for h in HEADS:
        mem = [v[f"{h}_accuracy"] for v in runs["memory"]]
        st = [v[f"{h}_accuracy"] for v in runs["stream"]]
        # noise: the seed-to-seed spread of the in-memory path, floored at 2 of the 80 val clips
        noise = max(max(mem) - min(mem), 2 / 80)
        assert abs(statistics.mean(st) - statistics.mean(mem)) <= 2 * noise + 0.05, (h, mem, st)
    assert (tmp_path / "stream0" / "metrics" / "confusion_val.json").exists()  # the report reads val in batches too
