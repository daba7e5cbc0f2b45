"""``--executor gpus`` on CPU: the worker plan from the visible devices, real dask workers started
with their own ``CUDA_VISIBLE_DEVICES``, and a run on them giving a local run's caches."""
from __future__ import annotations

import os

import pytest

from navcache.pipeline.config import config_from_dict, load_config
from navcache.pipeline.errors import ConfigError, NavcacheError
from navcache.pipeline.executors.gpu_workers import GpuClient, GpuWorkersConfig, plan_workers, visible_devices
from navcache.pipeline.runner import ExtractOptions, extract
from tests.helpers import cache_checksums, make_navila, write_project


def _no_torch() -> int:
    raise AssertionError("torch must not be asked when CUDA_VISIBLE_DEVICES is set")


@pytest.mark.parametrize("env, want", [
    ("0,1", ("0", "1")),
    (" 2, 3 ", ("2", "3")),
    ("GPU-8d3e,GPU-11aa", ("GPU-8d3e", "GPU-11aa")),
    ("1,-1,2", ("1",)),  # CUDA ignores everything from an invalid entry on
    ("", ()),
])
def test_visible_devices_follow_cuda_visible_devices(env, want):
    assert visible_devices({"CUDA_VISIBLE_DEVICES": env}, _no_torch) == want


def test_visible_devices_without_the_variable_counts_what_torch_sees():
    assert visible_devices({}, lambda: 3) == ("0", "1", "2")
    assert visible_devices({}, lambda: 0) == ()


def test_worker_plan_pins_one_device_per_worker():
    specs = plan_workers(visible_devices({"CUDA_VISIBLE_DEVICES": "0,1"}, _no_torch))
    assert [(s.name, s.env) for s in specs] == [("gpu-0", {"CUDA_VISIBLE_DEVICES": "0"}), ("gpu-1", {"CUDA_VISIBLE_DEVICES": "1"})]
    with pytest.raises(NavcacheError, match="no GPU is visible"):
        plan_workers(())
    with pytest.raises(NavcacheError, match="twice"):
        plan_workers(("0", "0"))


def test_gpus_block_is_typed_and_names_its_field(tmp_path):
    base = {"cache_root": "c", "datasets": {}}
    cfg = config_from_dict({**base, "gpus": {"devices": ["2", "5"], "threads_per_worker": 2}}, tmp_path)
    assert cfg.gpus == GpuWorkersConfig(devices=("2", "5"), threads_per_worker=2)
    with pytest.raises(ConfigError, match="gpus"):
        config_from_dict({**base, "gpus": {"device": ["0"]}}, tmp_path)
    with pytest.raises(ConfigError, match="threads_per_worker"):
        config_from_dict({**base, "gpus": {"threads_per_worker": 0}}, tmp_path)
    with pytest.raises(ValueError, match="gpus"):
        ExtractOptions("train", executor="gpu")


def test_workers_start_with_their_own_device():
    client = GpuClient(GpuWorkersConfig(dask_cuda=False), {"CUDA_VISIBLE_DEVICES": "0,1"})
    try:
        c = client.get()
        seen = c.run(lambda dask_worker: (dask_worker.name, os.environ.get("CUDA_VISIBLE_DEVICES")))
        assert sorted(seen.values()) == [("gpu-0", "0"), ("gpu-1", "1")]
        assert sorted(c.nthreads().values()) == [1, 1]
    finally:
        client.close()


@pytest.fixture(scope="module")
def navila(tmp_path_factory):
    return make_navila(tmp_path_factory.mktemp("nav") / "data", n_episodes=8)


def test_a_run_on_gpu_workers_equals_a_local_run(tmp_path, navila, tiny_model, monkeypatch):
    stages = ("poses", "frame_features")
    (tmp_path / "local").mkdir()
    (tmp_path / "gpus").mkdir()
    ref = extract(load_config(write_project(tmp_path / "local", navila, tiny_model, part_size=2)), ExtractOptions("train"))
    assert not ref.errors
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # two "GPUs": on this CPU machine torch sees none, encoders run on CPU
    s = extract(load_config(write_project(tmp_path / "gpus", navila, tiny_model, part_size=2)), ExtractOptions("train", executor="gpus"))
    assert not s.errors and all(x.finalized for x in s.stages)
    assert s.stages[1].parts_built == 8
    for st in stages:
        assert cache_checksums(tmp_path / "gpus/cache/nav/train" / st) == cache_checksums(tmp_path / "local/cache/nav/train" / st)


def test_no_visible_gpu_is_a_clear_error(tmp_path, navila, tiny_model, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(NavcacheError, match="no GPU is visible"):
        extract(load_config(write_project(tmp_path, navila, tiny_model, part_size=2)), ExtractOptions("train", executor="gpus"))
