"""Shared set-up for benchmarks: a demo world and a project file, built once under bench/out/."""
from __future__ import annotations

import json
import os
import sys
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


def machine_load() -> dict:
    """``/proc/loadavg``'s 1/5/15-minute averages and the cores this process may use."""
    one, five, fifteen = (float(x) for x in Path("/proc/loadavg").read_text().split()[:3])
    return {"loadavg_1m": one, "loadavg_5m": five, "loadavg_15m": fifteen, "cores": len(os.sched_getaffinity(0))}


def check_load(allow_load: bool = False, slack: float = 0.0) -> dict:
    """The machine load, printed; exits with status 3 when the 1-minute load exceeded the cores.

    A ratio measured while other processes fight for the cores says nothing about the code, so a
    benchmark calls this before and after it measures and refuses to report; ``--allow-load``
    (``allow_load=True``) reports anyway, with the load beside the figure. ``slack`` allows for the
    benchmark's own helper processes (e.g. a dask cluster it starts).
    """
    load = machine_load()
    print(f"machine load: {load['loadavg_1m']:.2f} {load['loadavg_5m']:.2f} {load['loadavg_15m']:.2f} on {load['cores']} cores",
          file=sys.stderr)
    if load["loadavg_1m"] > load["cores"] + slack and not allow_load:
        print(f"refusing to report: 1-minute load {load['loadavg_1m']:.2f} exceeds the {load['cores']} cores "
              "(other work would distort the ratio); rerun on a quiet machine or pass --allow-load", file=sys.stderr)
        raise SystemExit(3)
    return load


def training_step(task, model, opt):
    """``step(batch)``: one optimiser step of ``task.loss`` on ``batch`` (what ``run_loop`` does per batch)."""
    def step(batch) -> None:
        loss, _ = task.loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step
