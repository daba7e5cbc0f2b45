"""Find the project configuration: ``--config FILE``, else ``./navcache.yaml``, else the embedded demo.

The demo config points at the procedural demo world (generated on first use into
``./navcache_demo``) and a tiny seeded random-initialised DINOv3 saved beside it, so the whole
pipeline runs on a fresh machine with no downloads and no GPU.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from .config import ProjectConfig, config_from_dict, load_config

DEFAULT_FILE = "navcache.yaml"
DEMO_DIR = "navcache_demo"
DEMO_CACHE = "navcache_cache"
DEMO_ENCODER = "models/dinov3-tiny-random"
#: the demo's tiny VGGT: navcache's seeded random-init stand-in with VGGT's interface
#: (``pipeline/demo/vggt_standin.py``; the real ``vggt`` package is not on PyPI), so the heatmaps
#: head has aggregator tokens to read; labelled random_init in its provenance file
DEMO_VGGT = "models/vggt-tiny-random"
VGGT_STANDIN_CLASS = "navcache.pipeline.demo.vggt_standin:StandInVGGT"


def demo_config_dict(demo_dir: Path, cache_root: Path, pixels: bool = True) -> dict:
    """The embedded demo's project; ``pixels=False`` (a ``demo-data --no-pixels`` world, which
    holds the NaVILA records and poses only) keeps just what that world can build: demo_navila's poses."""
    if not pixels:
        full = demo_config_dict(demo_dir, cache_root)
        navila = {**full["datasets"]["demo_navila"], "stages": ["poses"]}
        return {"cache_root": full["cache_root"], "backend": full["backend"], "datasets": {"demo_navila": navila}}
    return {
        "cache_root": str(cache_root),
        "backend": "zarr",
        "datasets": {
            "demo_navila": {
                "source": "navila",
                "root": str(demo_dir / "navila"),
                "splits": ["train", "val"],
                "stages": ["poses", "frame-features"],
                "options": {"num_frames": 8},
                "part_size": 16,
            },
            # the same world's trajectories at 20x, records and poses only: enough episodes for
            # the GRU motion head (gru-motion's demo preset) to beat its baselines
            "demo_motion": {
                "source": "navila",
                "root": str(demo_dir / "motion"),
                "splits": ["train", "val"],
                "stages": ["poses"],
                "options": {"num_frames": 8},
                "part_size": 256,
            },
            "demo_rover": {
                "source": "rover",
                "root": str(demo_dir / "rover"),
                "splits": ["train", "val"],
                "stages": ["frame-features", "rover-meta"],
                "options": {"num_frames": 8},
                "part_size": 32,
            },
            # the Spatial-MLLM chain: geometry (ground truth here; VGGT on real videos) ->
            # space-aware keyframes -> DINOv3 on the keyframes only
            "demo_tours": {
                "source": "videos",
                "root": str(demo_dir / "videos"),
                "splits": ["train", "val"],
                "stages": ["geometry", "keyframes", "frame-features"],
                "options": {"num_frames": 128},
                "part_size": 4,
                "stage_settings": {"frame-features": {"frames_from": "keyframes"}},
            },
            # the heatmaps head's chain on the demo's glances (16-frame clips turning, looking
            # left then right, walking; 8 keyframes each, an 8 x 8 grid): simulator geometry ->
            # keyframes -> covisibility targets, DINOv3 patch tokens of the keyframes; VGGT
            # aggregator tokens of the same frames come from demo_heatmaps_vggt (the tiny
            # random-init VGGT), so the targets stay the simulator's truth
            "demo_heatmaps": {
                "source": "videos",
                "root": str(demo_dir / "glances"),
                "splits": ["train", "val"],
                "stages": ["geometry", "keyframes", "covisibility", "frame-features"],
                "options": {"num_frames": 16},
                "part_size": 16,
                "stage_settings": {"keyframes": {"num_keyframes": 8}, "covisibility": {"grid": 8},
                                   "frame-features": {"frames_from": "keyframes", "store_patch_tokens": True}},
            },
            "demo_heatmaps_vggt": {
                "source": "videos",
                "root": str(demo_dir / "glances"),
                "splits": ["train", "val"],
                "stages": ["geometry"],
                "options": {"num_frames": 16},
                "part_size": 16,
                "stage_settings": {"geometry": {"provider": "vggt", "image_size": [518, 518], "stride": 37,
                                                "vggt": {"model": str(demo_dir / DEMO_VGGT), "model_class": VGGT_STANDIN_CLASS,
                                                         "keep_tokens": True, "token_pool": 2}}},
            },
            # VAMOS-format parquet shards: first-person images, robot-frame paths -> 2-D velocities
            "demo_vamos": {
                "source": "vamos",
                "root": str(demo_dir / "vamos"),
                "splits": ["train", "val"],
                "stages": ["frame-features", "velocity"],
                "part_size": 64,
            },
            # LeRobot v3.0 drives (a robot driving to the box its task names): per-frame state/action (robot-meta) and DINOv3 on every frame
            # (num_frames above the longest walk) of each camera, the flow expert's context tokens
            "demo_lerobot": {
                "source": "lerobot",
                "root": str(demo_dir / "lerobot"),
                "splits": ["train", "val"],
                "stages": ["frame-features", "robot-meta"],
                "options": {"num_frames": 64, "camera": "observation.images.image"},
                "part_size": 16,
            },
            "demo_lerobot_left": {
                "source": "lerobot",
                "root": str(demo_dir / "lerobot"),
                "splits": ["train", "val"],
                "stages": ["frame-features"],
                "options": {"num_frames": 64, "camera": "observation.images.image2"},
                "part_size": 16,
            },
        },
        "stages": {
            "geometry": {"provider": "gt", "image_size": [128, 128], "stride": 2},
            "keyframes": {"strategy": "space-aware", "num_keyframes": 16},
            "frame-features": {
                "encoder": {"model": str(demo_dir / DEMO_ENCODER)},
                "pool_grid": 2,
                "batch_size": 64,
            }
        },
    }


#: what a pixel-free demo world lacks, and so what its project leaves out
PIXEL_FREE_LACKS = "demo_navila's frames (frame-features), demo_motion, demo_rover, demo_tours, demo_heatmaps(_vggt), demo_vamos and demo_lerobot"


def ensure_demo(demo_dir: Path, say: Callable[[str], None] = print, scale: float = 1.0) -> bool:
    """Generate the demo world and the tiny encoder if they are not there yet; returns whether the
    world has pixels.

    A world already there is never regenerated into something else: a pixel-free one
    (``demo-data --no-pixels``, possibly at a scale where rendering takes hours and gigabytes) is
    used as it is, saying what it lacks and the command that adds it. Only a world in an older
    format is rewritten, with the same seed, scale and pixels, since this navcache cannot read it.
    """
    from .demo import demo_lock
    from .encoders.tiny import make_random_dinov3
    from .encoders.weights import PROVENANCE_FILE

    if _demo_format(demo_dir) is not None:
        pixels = _ensure_world(demo_dir, say, scale)
    else:  # generating: concurrent runs in this folder wait for the first, then use its world
        with demo_lock(demo_dir):
            pixels = _ensure_world(demo_dir, say, scale)
    make_random_dinov3(demo_dir / DEMO_ENCODER, size="tiny", seed=0)
    if pixels and not (demo_dir / DEMO_VGGT / PROVENANCE_FILE).exists():  # written last
        from .demo.vggt_standin import make_standin  # imports torch: only when it is to be written

        make_standin(demo_dir / DEMO_VGGT, seed=0)
    return pixels


def _demo_format(demo_dir: Path) -> str | None:
    """The world's format when it is one this navcache reads (None: it must be generated)."""
    from .demo import FORMAT

    try:
        fmt = json.loads((demo_dir / "demo_info.json").read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None
    return fmt if fmt == FORMAT else None


def _ensure_world(demo_dir: Path, say: Callable[[str], None], scale: float) -> bool:
    from .demo import FORMAT, generate_demo

    info = demo_dir / "demo_info.json"
    if not info.exists():  # any scale already there is kept (`navcache demo-data --scale`)
        say(f"navcache: no {DEFAULT_FILE} here, using the embedded demo; generating the demo world into {demo_dir} (once)")
        generate_demo(demo_dir, scale=scale, lock=False)
        pixels = True
    else:
        meta = json.loads(info.read_text())
        pixels = bool(meta.get("pixels", True))
        scale, seed = float(meta.get("scale", scale)), int(meta.get("seed", 0))
        if meta.get("format") != FORMAT:
            say(f"navcache: the demo world in {demo_dir} is from an older navcache; rewriting it in this version's format (same seed, scale and pixels)")
            generate_demo(demo_dir, scale=scale, seed=seed, pixels=pixels, lock=False)
        elif not pixels:
            say(f"navcache: the demo world in {demo_dir} has no pixels (made by `navcache demo-data --no-pixels`): "
                f"only demo_navila's poses can be built; {PIXEL_FREE_LACKS} are left out. "
                f"To add them (renders every frame): navcache demo-data {demo_dir} --scale {scale:g} --seed {seed}")
    return pixels


def resolve_project(config: Path | None = None, cwd: Path | None = None, say: Callable[[str], None] = print) -> ProjectConfig:
    cwd = Path(cwd or Path.cwd())
    if config is not None:
        return load_config(config)
    if (cwd / DEFAULT_FILE).exists():
        return load_config(cwd / DEFAULT_FILE)
    demo_dir = cwd / DEMO_DIR
    pixels = ensure_demo(demo_dir, say)
    return config_from_dict(demo_config_dict(demo_dir, cwd / DEMO_CACHE, pixels), cwd, origin="demo")


def default_cache_root(cwd: Path | None = None) -> Path:
    """The cache root ``resolve_project`` would use here, without generating the demo world."""
    cwd = Path(cwd or Path.cwd())
    if (cwd / DEFAULT_FILE).exists():
        return Path(load_config(cwd / DEFAULT_FILE).cache_root)
    return cwd / DEMO_CACHE


def demo_project(cache_root: str | Path, cwd: Path | None = None, say: Callable[[str], None] = print) -> ProjectConfig | None:
    """The embedded demo project when ``cache_root`` is its cache root here (no ./navcache.yaml), else None.

    Only then is the demo world generated: a head pointed at caches of its own is never given a demo.
    """
    cwd = Path(cwd or Path.cwd())
    if (cwd / DEFAULT_FILE).exists() or Path(cache_root).resolve() != (cwd / DEMO_CACHE).resolve():
        return None
    return resolve_project(cwd=cwd, say=say)
