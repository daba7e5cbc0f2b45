"""Each source's options as a frozen dataclass, built by the project's one config builder.

This module imports no decoder (cv2, pyarrow...), so a project file's ``datasets.<name>.options``
are validated when it is loaded, before any source module is imported. Messages name the field:
``datasets.nav.options.num_frames: expected an integer, got 'x'``, ``datasets.nav.options:
num_frames must be an integer >= 2, got 1``, ``datasets.nav.options: unknown field 'fps' (valid:
allow_outside_root, annotations, images, max_image_pixels, num_frames, poses)``.

Every source takes ``allow_outside_root`` (default false): every file a source reads, the ones its
own templates name included, must resolve under the dataset root, symlinks followed
(``pipeline/safepaths.py``); ``true`` lets them live elsewhere on purpose (frames symlinked to
shared storage). Changing it changes the source options, hence the fingerprints (a rebuild).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import ConfigError
from navcache.cache_specs.config import build


def check_template(option: str, value: object) -> None:
    """A file-name template may use ``{split}`` and nothing else (ValueError naming ``option``)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{option!r} must be a non-empty string, got {value!r}")
    try:
        value.format(split="x")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"{option!r} = {value!r}: only the placeholder {{split}} is allowed ({e})") from None


def check_flag(option: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{option!r} must be true or false, got {value!r}")
#: default ``max_image_pixels``: 64 Mpx is an 8000x8000 frame (192 MB decoded), far above any
#: camera's frames; ``pipeline.decode.DEFAULT_MAX_PIXELS`` is the same number (this module imports no decoder)
MAX_IMAGE_PIXELS = 64_000_000


def check_min(option: str, value: object, minimum: int) -> None:
    # build() already refused non-integers; this guards direct construction too
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{option!r} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class NavilaOptions:
    #: annotation file, relative to the dataset root
    annotations: str = "annotations_{split}.json"
    #: image folder; the records' "frames" paths are relative to it
    images: str = "{split}"
    #: optional pose file {video_id: [[x, y, yaw], ...]}
    poses: str = "poses_{split}.json"
    #: T, frames NaVILA's sampling keeps (front-padded with black when the history is shorter)
    num_frames: int = 8
    #: read files that resolve outside the dataset root (see the module docstring)
    allow_outside_root: bool = False
    #: an image whose header states more pixels quarantines its episode, before it is decoded (null: no limit)
    max_image_pixels: int | None = MAX_IMAGE_PIXELS

    def __post_init__(self):
        for name in ("annotations", "images", "poses"):
            check_template(name, getattr(self, name))
        check_min("num_frames", self.num_frames, 2)
        check_flag("allow_outside_root", self.allow_outside_root)
        if self.max_image_pixels is not None:
            check_min("max_image_pixels", self.max_image_pixels, 1)


@dataclass(frozen=True)
class RoverOptions:
    #: parquet table, relative to the dataset root
    table: str = "{split}.parquet"
    #: frames decoded per clip, spread uniformly, first and last included
    num_frames: int = 8
    #: read files that resolve outside the dataset root (see the module docstring)
    allow_outside_root: bool = False

    def __post_init__(self):
        check_template("table", self.table)
        check_min("num_frames", self.num_frames, 1)
        check_flag("allow_outside_root", self.allow_outside_root)


@dataclass(frozen=True)
class VideosOptions:
    #: the split folder, relative to the dataset root
    split_dir: str = "{split}"
    #: optional file listing the split's episode ids, one a line
    split_list: str | None = None
    #: N_m, the most frames decoded per episode
    num_frames: int = 128
    #: episodes with fewer frames are quarantined
    min_frames: int = 2
    #: read files that resolve outside the dataset root (see the module docstring)
    allow_outside_root: bool = False
    #: a frames-folder image whose header states more pixels quarantines its episode, before it is
    #: decoded (null: no limit)
    max_image_pixels: int | None = MAX_IMAGE_PIXELS

    def __post_init__(self):
        check_flag("allow_outside_root", self.allow_outside_root)
        check_template("split_dir", self.split_dir)
        if self.split_list is not None:
            check_template("split_list", self.split_list)
        check_min("num_frames", self.num_frames, 1)
        check_min("min_frames", self.min_frames, 1)
        if self.max_image_pixels is not None:
            check_min("max_image_pixels", self.max_image_pixels, 1)


@dataclass(frozen=True)
class LeRobotOptions:
    #: the camera ``read_frames`` serves (a key of info.json's features; null: the first camera)
    camera: str | None = None
    #: frames decoded per episode for frame stages, spread uniformly, first and last included
    num_frames: int = 8
    #: a table timestamp is served by the nearest decoded frame within this many seconds
    #: (LeRobotDataset's default ``tolerance_s``); consecutive timestamps must be 1/fps apart within it
    tolerance_s: float = 1e-4
    #: read files that resolve outside the dataset root (see the module docstring)
    allow_outside_root: bool = False

    def __post_init__(self):
        check_flag("allow_outside_root", self.allow_outside_root)
        check_min("num_frames", self.num_frames, 1)
        if self.camera is not None and (not isinstance(self.camera, str) or not self.camera):
            raise ValueError(f"'camera' must be a feature key such as 'observation.images.image', got {self.camera!r}")
        if isinstance(self.tolerance_s, bool) or not isinstance(self.tolerance_s, (int, float)) or not 0 < self.tolerance_s < 1:
            raise ValueError(f"'tolerance_s' must be a number of seconds in (0, 1), got {self.tolerance_s!r}")


@dataclass(frozen=True)
class VamosOptions:
    #: parquet shards of a split, a glob relative to the dataset root (the VAMOS/HF layout)
    shards: str = "data/{split}-*.parquet"
    #: the shards' split name for a project split name ({split} above); others map to themselves
    split_names: Mapping[str, str] = field(default_factory=lambda: {"val": "validation"})
    #: the 3-D path column (metres) and its projection (pixels): the variants VAMOS ships are
    #: trajectory_3d / shorter_trajectory_3d with trajectory_2d / shorter_trajectory_2d
    trajectory_3d: str = "trajectory_3d"
    trajectory_2d: str = "trajectory_2d"
    #: axes of trajectory_3d: "flu" (robot frame: x forward, y left, z up), "opencv" (camera
    #: frame: x right, y down, z forward), "auto" (whichever fits each shard)
    axis_convention: str = "flu"
    #: a projected point agrees with its trajectory_2d point within this many pixels
    axis_tolerance_px: float = 2.0
    #: a shard whose projected points agree less often than this refuses the convention
    min_axis_agreement: float = 0.9
    #: a column holding stable episode ids (used when the shard has it; else shard stem + row)
    id_column: str = "id"
    #: rows per parquet read (memory is one batch, never a whole shard)
    batch_rows: int = 256
    #: read files (image paths) that resolve outside the dataset root (see the module docstring)
    allow_outside_root: bool = False
    #: an image whose header states more pixels quarantines its row (null: no limit)
    max_image_pixels: int | None = MAX_IMAGE_PIXELS

    def __post_init__(self):
        check_template("shards", self.shards)
        check_flag("allow_outside_root", self.allow_outside_root)
        if self.axis_convention not in AXIS_CONVENTIONS:
            raise ValueError(f"'axis_convention' must be one of {', '.join(AXIS_CONVENTIONS)}, got {self.axis_convention!r}")
        for name in ("trajectory_3d", "trajectory_2d", "id_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name!r} must be a non-empty column name, got {getattr(self, name)!r}")
        if not (isinstance(self.axis_tolerance_px, (int, float)) and self.axis_tolerance_px > 0):
            raise ValueError(f"'axis_tolerance_px' must be a number > 0, got {self.axis_tolerance_px!r}")
        if not (isinstance(self.min_axis_agreement, (int, float)) and 0 < self.min_axis_agreement <= 1):
            raise ValueError(f"'min_axis_agreement' must be in (0, 1], got {self.min_axis_agreement!r}")
        check_min("batch_rows", self.batch_rows, 1)
        if self.max_image_pixels is not None:
            check_min("max_image_pixels", self.max_image_pixels, 1)


#: axis conventions the vamos source can check trajectory_3d against (``axis_convention``)
AXIS_CONVENTIONS = ("flu", "opencv", "auto")


#: options class of each source kind (the keys are ``pipeline.sources.SOURCES``'s)
OPTIONS: dict[str, type] = {"navila": NavilaOptions, "rover": RoverOptions, "videos": VideosOptions,
                           "lerobot": LeRobotOptions, "vamos": VamosOptions}


def build_options(kind: str, options: Any, where: str | None = None) -> Any:
    """``options`` (a mapping, or already the options dataclass) as source ``kind``'s frozen
    options; ConfigError naming the field under ``where`` (default ``<kind>.options``)."""
    if kind not in OPTIONS:
        raise ConfigError(f"unknown source kind {kind!r}; valid kinds: {', '.join(sorted(OPTIONS))}")
    if options is not None and not isinstance(options, (Mapping, OPTIONS[kind])):
        raise ConfigError(f"{where or kind + '.options'}: expected a mapping, got {type(options).__name__}")
    data = dict(options) if isinstance(options, Mapping) else options
    return build(OPTIONS[kind], data, where or f"{kind}.options")
