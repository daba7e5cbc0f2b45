"""The project file (``navcache.yaml``): cache root, datasets and stage settings, typed and frozen.

    cache_root: ./navcache_cache
    backend: zarr                  # or hdf5
    datasets:
      r2r:
        source: navila             # see pipeline/sources
        root: /data/NaVILA/R2R
        splits: [train, val_unseen]
        stages: [poses, frame-features]
        options: {num_frames: 8}
        stage_settings:            # per-dataset overrides of the global stage settings below
          frame-features: {frames_from: source}
    stages:
      frame-features:
        encoder: {model: facebook/dinov3-vitb16-pretrain-lvd1689m}
        pool_grid: 4

Relative paths are relative to the file's folder. Every error names the field it is about.
Dataset and split names become folders under ``cache_root``: letters, digits, ``.``, ``_``, ``-``
(``cache_specs.config.check_name``). A dataset whose files live outside its ``root`` on purpose
says so with ``options: {allow_outside_root: true}`` (``pipeline/safepaths.py``).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from navcache.cache_specs.config import build, check_name, merge, read_yaml, to_plain, unknown_name

from .errors import ConfigError
from .executors.gpu_workers import GpuWorkersConfig
from .executors.slurm_cluster import SlurmClusterConfig


@dataclass(frozen=True)
class DatasetConfig:
    source: str
    root: Path
    splits: tuple[str, ...] = ("train", "val")
    stages: tuple[str, ...] = ("frame-features",)
    options: dict[str, Any] = field(default_factory=dict)
    #: episodes per part: the unit of atomic writing, skipping and recompute
    part_size: int = 32
    #: per-stage settings for this dataset only, merged over the project's ``stages`` block
    stage_settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self):
        if self.part_size < 1:
            raise ValueError(f"part_size must be >= 1, got {self.part_size}")
        if not self.splits:
            raise ValueError("splits must not be empty")


@dataclass(frozen=True)
class RunConfig:
    """Execution knobs: they change speed, never results, so they stay out of fingerprints."""

    decode_workers: int = 3
    prefetch_episodes: int = 32
    pending_writes: int = 2
    #: a concurrent run's claim on a part (``pipeline/leases.py``) whose heartbeat stopped this long
    #: is taken over; heartbeats every sixth of it
    lease_timeout_s: float = 60.0
    #: MiB of decoded frames each source keeps for reuse within a run (least recently used dropped
    #: first): samples sharing frames decode them once (``decode.DecodedFrames``, ``DecodedVideoFrames``)
    decoded_frames_mb: int = 256

    def __post_init__(self):
        for name in ("decode_workers", "prefetch_episodes", "pending_writes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if isinstance(self.decoded_frames_mb, bool) or not isinstance(self.decoded_frames_mb, int) or self.decoded_frames_mb < 0:
            raise ValueError(f"decoded_frames_mb must be an integer >= 0, got {self.decoded_frames_mb!r}")
        if not self.lease_timeout_s > 0:
            raise ValueError(f"lease_timeout_s must be > 0, got {self.lease_timeout_s}")


@dataclass(frozen=True)
class ProjectConfig:
    cache_root: Path
    datasets: dict[str, DatasetConfig]
    stages: dict[str, Any] = field(default_factory=dict)
    backend: Literal["zarr", "zarr-raw", "hdf5", "hdf5-raw"] = "zarr"  # *-raw: uncompressed chunks, for caches streamed every epoch
    chunk_rows: int = 64
    run: RunConfig = field(default_factory=RunConfig)
    #: worker jobs of ``--executor slurm`` (dask-jobqueue)
    slurm: SlurmClusterConfig = field(default_factory=SlurmClusterConfig)
    #: workers of ``--executor gpus`` (one per GPU of this node)
    gpus: GpuWorkersConfig = field(default_factory=GpuWorkersConfig)
    #: where the file came from ("demo" for the embedded demo config)
    origin: str = "file"

    def dataset(self, name: str) -> DatasetConfig:
        if name not in self.datasets:
            raise unknown_name("dataset", name, sorted(self.datasets))
        return self.datasets[name]

    def stage_settings(self, stage: str, dataset: str | None = None):
        """The stage's typed settings (defaults where the file says nothing).

        With ``dataset``, that dataset's ``stage_settings.<stage>`` block is merged over the
        project's ``stages.<stage>`` block (nested mappings merged key by key).
        """
        from .stages import stage_class

        raw, where = dict(self.stages.get(stage) or {}), f"stages.{stage}"
        if dataset is not None:
            override = self.dataset(dataset).stage_settings.get(stage)
            if override:
                raw, where = merge(raw, override), f"datasets.{dataset}.stage_settings.{stage} (over stages.{stage})"
        return build(stage_class(stage).Settings, raw, where)

    def to_dict(self) -> dict:
        return to_plain(self)


def _absolutise(cfg: dict, base: Path) -> dict:
    cfg = dict(cfg)
    if "cache_root" in cfg and isinstance(cfg["cache_root"], str):
        cfg["cache_root"] = str((base / cfg["cache_root"]).resolve())
    ds = cfg.get("datasets")
    if isinstance(ds, dict):
        cfg["datasets"] = {
            k: ({**v, "root": str((base / v["root"]).resolve())} if isinstance(v, dict) and isinstance(v.get("root"), str) else v)
            for k, v in ds.items()
        }
    return cfg


def config_from_dict(data: Mapping[str, Any], base: Path, origin: str = "file") -> ProjectConfig:
    if not isinstance(data, Mapping):
        raise ConfigError("project file: expected a mapping at the top level")
    cfg = build(ProjectConfig, {**_absolutise(dict(data), base), "origin": origin}, "config")
    from .sources import SOURCES, source_options
    from .stages import STAGES

    for name, ds in cfg.datasets.items():
        check_name("dataset", name, "datasets")
        for i, split in enumerate(ds.splits):
            check_name("split", split, f"datasets.{name}.splits[{i}]")
        if ds.source not in SOURCES:
            raise unknown_name("source", ds.source, SOURCES, f"datasets.{name}.source")
        source_options(ds.source, ds.options, f"datasets.{name}.options")  # validate now, naming the field
        for st in ds.stages:
            if st not in STAGES:
                raise unknown_name("stage", st, STAGES, f"datasets.{name}.stages")
        for st in ds.stage_settings:
            if st not in STAGES:
                raise unknown_name("stage", st, STAGES, f"datasets.{name}.stage_settings")
            cfg.stage_settings(st, name)
    for st in cfg.stages:
        if st not in STAGES:
            raise unknown_name("stage", st, STAGES, "stages")
        cfg.stage_settings(st)  # validate now, not halfway through a run
    return cfg


def check_cache_root(cache_root: Path) -> None:
    """ConfigError naming ``cache_root``, its path and the OS reason when no file can be created
    under it (``/proc``, a read-only mount, a file in the way); creates the folder otherwise.

    Probed by creating a file there rather than with ``os.access``, which says yes to root for
    almost anything; the probe is an unnamed temporary file (``O_TMPFILE`` on Linux), so a run
    killed mid-probe leaves nothing behind.
    """
    root = Path(cache_root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as e:
        raise ConfigError(f"cache_root: cannot write caches under {str(root)!r}: {e.strerror or e}") from None


def load_config(path: Path) -> ProjectConfig:
    path = Path(path)
    return config_from_dict(read_yaml(path, "project file"), path.parent.resolve(), origin=str(path))
