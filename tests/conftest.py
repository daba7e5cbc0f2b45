from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def navcache_home(tmp_path_factory) -> Path:
    """The user folder for memos (weights hashes, encoder facts): a session temp dir, so that the
    suite never writes ``~/.cache/navcache``. Set in ``os.environ`` before any test runs, so
    subprocesses (``navcache`` CLI runs, torchrun workers) inherit it too; tests that need their
    own folder still monkeypatch it."""
    home = tmp_path_factory.mktemp("navcache_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NAVCACHE_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny seeded random-init DINOv3ViTModel saved with save_pretrained (loaded via from_pretrained)."""
    from navcache.pipeline.encoders.tiny import make_random_dinov3

    return make_random_dinov3(tmp_path_factory.mktemp("models") / "dinov3-tiny", size="tiny", seed=0, image_size=64)


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory) -> Path:
    """The embedded demo world at default size, generated once per test session."""
    from navcache.pipeline.demo import generate_demo

    out = tmp_path_factory.mktemp("demo") / "navcache_demo"
    generate_demo(out, scale=1.0, seed=0)
    return out


@pytest.fixture(scope="session")
def demo_caches(tmp_path_factory, demo_world) -> Path:
    """A working folder holding the demo world and the train + val caches of every demo dataset,
    built once per test session (``navcache_cache/`` inside it). Read-only, except for a test that
    deletes a cache and asserts the rebuild is byte-identical."""
    from navcache.pipeline.runner import ExtractOptions, extract
    from tests.helpers import demo_job

    cwd, project = demo_job(tmp_path_factory, demo_world, "demo_caches")
    for split in ("train", "val"):
        summary = extract(project, ExtractOptions(split))
        assert not summary.errors, summary.errors
    return cwd


@pytest.fixture(scope="session")
def demo_cache_root(demo_caches) -> Path:
    """The session's demo cache root (read-only)."""
    return demo_caches / "navcache_cache"
