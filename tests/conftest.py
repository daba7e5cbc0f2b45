from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny seeded random-init DINOv3ViTModel saved with save_pretrained (loaded via from_pretrained)."""
    from pipeline.encoders.tiny import make_random_dinov3

    return make_random_dinov3(tmp_path_factory.mktemp("models") / "dinov3-tiny", size="tiny", seed=0, image_size=64)


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory) -> Path:
    """The embedded demo world at default size, generated once per test session."""
    from pipeline.demo import generate_demo

    out = tmp_path_factory.mktemp("demo") / "navcache_demo"
    generate_demo(out, scale=1.0, seed=0)
    return out
