"""Shared set-up for benchmarks: a demo world and a project file, built once under bench/out/."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parent / "out"


def demo_project(name: str, scale: float, encoder_size: str = "tiny", datasets=("demo_navila", "demo_rover"), image_size: int = 224,
                 batch_size: int = 32, stages=("frame-features",)) -> Path:
    """A project file over the demo world at ``scale`` with a random-init DINOv3 of ``encoder_size``."""
    from navcache.pipeline.demo import generate_demo
    from navcache.pipeline.encoders.tiny import make_random_dinov3
    from navcache.pipeline.project import demo_config_dict

    root = OUT / name
    demo = OUT / f"demo_scale{scale:g}"
    generate_demo(demo, scale=scale)
    model = make_random_dinov3(OUT / "models" / f"dinov3-{encoder_size}-{image_size}", size=encoder_size, seed=0, image_size=image_size)
    cfg = demo_config_dict(demo, root / "cache")
    cfg["datasets"] = {k: {**v, "stages": list(stages)} for k, v in cfg["datasets"].items() if k in datasets}
    cfg["stages"]["frame-features"].update(encoder={"model": str(model)}, batch_size=batch_size)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "navcache.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def record(name: str, result: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
