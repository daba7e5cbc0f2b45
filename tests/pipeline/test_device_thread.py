"""The device is not left waiting for the CPU (issue 17, ``executors/local.py``, ``runner._Ahead``):

- the next batch is collated while the device thread computes the current one;
- the device thread runs the encoder at the caller's torch thread count, even while the main
  thread has set its own to 1 around its glue;
- a first extract loads the encoder on the warm-up thread while planning hashes; an up-to-date
  rerun and a dry run load no weights at all.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from navcache.cache_specs import open_cache
from navcache.pipeline.config import load_config
from navcache.pipeline.encoders.base import FrozenEncoder
from navcache.pipeline.runner import ExtractOptions, extract
from navcache.pipeline.sources import make_source
from navcache.pipeline.stages.frame_features import FrameFeaturesStage
from tests.helpers import make_navila, write_project


@pytest.mark.parametrize("dedup", [False, True])
def test_the_next_batch_is_collated_while_the_device_computes(tmp_path, tiny_model, monkeypatch, dedup):
    """Each compute but the last waits (up to 20 s) until the batch after it has been collated: a
    sequential loop, which collates only after compute returns, would time out on every one.
    8 frames a sample, batches of 8: one sample a batch."""
    data = make_navila(tmp_path / "data", n_episodes=3)
    n = len(make_source("navila", data).episodes("train"))
    collated, overlapped, threads = [], [], set()
    event = threading.Condition()
    real_collate, real_compute = FrameFeaturesStage.collate, FrameFeaturesStage.compute

    def collate(self, items):
        with event:
            collated.append([it.episode_id for it in items])
            event.notify_all()
        return real_collate(self, items)

    def compute(self, items, collated_=None):
        threads.add(threading.current_thread().name)
        k = next(i for i, ids in enumerate(collated) if ids == [it.episode_id for it in items])
        if k < n - 1:
            with event:
                overlapped.append(event.wait_for(lambda: len(collated) > k + 1, timeout=20))
        return real_compute(self, items, collated_)

    monkeypatch.setattr(FrameFeaturesStage, "collate", collate)
    monkeypatch.setattr(FrameFeaturesStage, "compute", compute)
    cfg = write_project(tmp_path, data, tiny_model, cache_root=str(tmp_path / "cache"), part_size=3, batch_size=8, dedup_frames=dedup)
    s = extract(load_config(cfg), ExtractOptions("train", only="frame-features"))
    assert not s.errors, s.errors
    assert len(collated) == n > 3
    assert overlapped == [True] * (n - 1)
    assert {t.split("_")[0] for t in threads} == {"navcache-device"}
    cache = open_cache(tmp_path / "cache/nav/train/frame_features")
    assert len(cache.episodes) == n and all(np.isfinite(cache[e]["cls"]).all() for e in cache.episodes)


SCRIPT = """
import torch
from navcache.pipeline.encoders.base import torch_threads
from navcache.pipeline.executors.local import device_thread
caller = torch.get_num_threads()
with device_thread() as device:
    with torch_threads(1):  # the main thread's glue, while the device thread runs its first op
        seen = device.submit(lambda: (torch.ones(64, 64) @ torch.ones(64, 64), torch.get_num_threads())[1]).result()
print(caller, seen)
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores for torch's default count to exceed 1")
def test_the_device_thread_keeps_the_callers_thread_count():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    caller, seen = map(int, out.stdout.split())
    assert caller == seen > 1


@pytest.fixture
def loads(monkeypatch):
    """The thread name of every encoder weight load."""
    seen = []
    real = FrozenEncoder.load

    def load(self):
        if self._model is None:
            seen.append(threading.current_thread().name)
        return real(self)

    monkeypatch.setattr(FrozenEncoder, "load", load)
    return seen


def test_a_first_extract_loads_the_encoder_while_planning_and_a_rerun_loads_nothing(tmp_path, tiny_model, loads):
    data = make_navila(tmp_path / "data", n_episodes=4)
    cfg = load_config(write_project(tmp_path, data, tiny_model, cache_root=str(tmp_path / "cache"), part_size=2))
    s = extract(cfg, ExtractOptions("train", dry_run=True))
    assert not s.errors and loads == []  # a dry run plans only
    s = extract(cfg, ExtractOptions("train"))
    assert not s.errors, s.errors
    assert [t.split("_")[0] for t in loads] == ["navcache-warm"]  # once, ahead of the build
    loads.clear()
    s = extract(load_config(write_project(tmp_path, data, tiny_model, cache_root=str(tmp_path / "cache"), part_size=2)), ExtractOptions("train"))
    assert not s.errors and sum(st.parts_built for st in s.stages) == 0
    assert loads == []  # up to date: no weights loaded


def test_a_listing_error_is_reported_without_waiting_for_the_warm_up_load(tmp_path, tiny_model, monkeypatch):
    """The encoder starts loading before the inputs are listed; a listing that fails (here: the
    split's annotation file is gone) must not wait for a slow load to end before it is reported."""
    data = make_navila(tmp_path / "data", n_episodes=4)
    cfg = load_config(write_project(tmp_path, data, tiny_model, cache_root=str(tmp_path / "cache"), part_size=2))
    release, started, finished = threading.Event(), threading.Event(), threading.Event()
    real = FrozenEncoder.load

    def slow_load(self):
        started.set()
        release.wait(120)  # a big model's load
        finished.set()
        return real(self)

    monkeypatch.setattr(FrozenEncoder, "load", slow_load)
    for f in data.rglob("*.json"):
        if "train" in f.name:
            f.unlink()
    try:
        s = extract(cfg, ExtractOptions("train"))
        assert s.errors and all("annotations_train.json" in e for e in s.errors), s.errors
        assert not finished.is_set()  # returned while the load was still running
        assert started.wait(60)  # (it was started: before the listing)
    finally:
        release.set()
