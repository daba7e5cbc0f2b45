"""``spatial``: frozen multi-view 3-D perception per sampled timestep, for 3-D VLA heads.

The views of a timestep are the episode's cameras at that timestep (``source.cameras`` and
``source.read_camera``, e.g. LeRobot's two LIBERO cameras), or the stage's ``views`` subset in
that order; sources without cameras give one view (``"frame"``). The resolved view set enters
the fingerprint, so adding a camera to a dataset recomputes its spatial cache.

Provider (spec ``cache_specs/specs/spatial.py``): ``mapanything``, MapAnything over the V views
of each timestep (one reconstruction per timestep; ``frames_per_batch`` timesteps per ``infer``
call): points, depth, intrinsics, cam2world poses, confidence, mask at ``stride``, optional pooled
multi-view features, plus each view's camera number and the stride, so that a consumer stage can
use the maps without this stage's settings. LLaVA-3D's 3-D patches are the separate stage
``spatial-llava3d`` (``spatial_llava3d.py``), which reads this cache instead of running
MapAnything again.

Bad input never crashes a run: views of different sizes within an episode, a model error on a
timestep, NaN/inf outputs, a model input size other than ``image_size``: the episode is
quarantined with the frame, the view and the reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from navcache.cache_specs.specs.spatial import SPEC, SPEC_WITH_FEATURES

from ..encoders.mapanything import MapAnythingAdapter, MapAnythingSettings
from ..errors import ConfigError, Quarantine
from .base import Prepared, Stage

F16_MAX = float(np.finfo(np.float16).max)
SINGLE_VIEW = "frame"


@dataclass(frozen=True)
class SpatialSettings:
    #: only "mapanything" (a str, not a Literal, so that "llava3d" gets the message pointing at its stage)
    provider: str = "mapanything"
    #: camera keys of a timestep's views, in this order; empty = every camera of the source
    views: tuple[str, ...] = ()
    mapanything: MapAnythingSettings = field(default_factory=MapAnythingSettings)
    #: (H, W) of MapAnything's input (its 518-px bucket for the cameras' aspect); others quarantined
    image_size: tuple[int, int] = (518, 518)
    #: keep every stride-th pixel of the stored maps (1 = all)
    stride: int = 4
    #: timesteps per model call (speed and memory only; not in the fingerprint)
    frames_per_batch: int = 8

    def __post_init__(self):
        if self.provider == "llava3d":
            raise ValueError("provider 'llava3d' is its own stage now: add stage 'spatial-llava3d' to the dataset "
                             "(settings under stages.spatial-llava3d); it reads this stage's MapAnything cache")
        if self.provider != "mapanything":
            raise ValueError(f"provider must be 'mapanything', got {self.provider!r}")
        if len(set(self.views)) != len(self.views):
            raise ValueError(f"views must not repeat a camera, got {list(self.views)}")
        if len(self.image_size) != 2 or min(self.image_size) < 14 or any(v % 14 for v in self.image_size):
            raise ValueError(f"image_size must be [H, W], multiples of 14, got {list(self.image_size)}")
        for name in ("stride", "frames_per_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")


def resolve_views(source, wanted: tuple[str, ...], field: str) -> tuple[str, ...]:
    """The cameras of a timestep's views: ``wanted`` (checked against the source's cameras, the
    error naming ``field``) or every camera; (``SINGLE_VIEW``,) for sources without cameras."""
    cams = tuple(getattr(source, "cameras", ()) or ())
    if not cams:
        if wanted not in ((), (SINGLE_VIEW,)):
            raise ConfigError(f"{field}: source {source.kind!r} has one view ({SINGLE_VIEW!r}), got {list(wanted)}")
        return (SINGLE_VIEW,)
    bad = [v for v in wanted if v not in cams]
    if bad:
        raise ConfigError(f"{field}: {bad[0]!r} is not a camera of this dataset (valid: {', '.join(cams)})")
    return tuple(wanted) or cams


def camera_numbers(source, views: tuple[str, ...]) -> np.ndarray:
    """int64 [V]: each view's position in ``source.cameras`` (0 for the single view), the view
    identity stored in the rows (``view_index``) so that consumers can match cameras."""
    cams = tuple(getattr(source, "cameras", ()) or ()) or (SINGLE_VIEW,)
    return np.array([cams.index(v) for v in views], np.int64)


def read_views(source, episode) -> tuple[np.ndarray, object]:
    """The episode's sampled real frames: (frame indices int64 [T], ``Frames``); Quarantine if none."""
    frames = source.read_frames(episode)
    real = ~frames.padded
    if not real.any():
        raise Quarantine("no real frame to run a spatial stage on")
    return frames.indices[real].astype(np.int64), frames


def view_pixels(source, episode, views: tuple[str, ...], index: np.ndarray, frames) -> list[np.ndarray]:
    """uint8 [T, H, W, 3] per view at frames ``index`` (the default camera reused from ``frames``)."""
    real = ~frames.padded
    if views == (SINGLE_VIEW,):
        return [frames.pixels[real]]
    first = getattr(source, "camera", None)
    return [frames.pixels[real] if cam == first else source.read_camera(episode, cam, index.tolist()) for cam in views]


class SpatialStage(Stage):
    name = "spatial"
    setup_ahead = True
    # 2: llava3d moved to stage spatial-llava3d; rows carry view_index and stride
    code_version = "2"
    uses = ("frames",)
    skip_file_suffixes = (".gt.npz",)  # ground-truth sidecars: MapAnything never reads them
    Settings = SpatialSettings

    def __init__(self, settings, source, source_options):
        super().__init__(settings, source, source_options)
        self.mapanything = MapAnythingAdapter(settings.mapanything)
        self.view_names = resolve_views(source, settings.views, "stages.spatial.views")

    # -- planning -----------------------------------------------------------------------------
    def spec(self):
        return SPEC_WITH_FEATURES if self.settings.mapanything.keep_features else SPEC

    def dims(self) -> dict[str, int]:
        (h, w), st = self.settings.image_size, self.settings.stride
        d = {"V": len(self.view_names), "h": math.ceil(h / st), "w": math.ceil(w / st)}
        if self.settings.mapanything.keep_features:
            d.update(G=self.settings.mapanything.feature_grid, C=_feature_dim(self.settings.mapanything.model))
        return d

    def identity(self) -> dict:
        s = self.settings
        return {"provider": s.provider, "views": list(self.view_names), "image_size": list(s.image_size),
                "mapanything": self.mapanything.identity(), "stride": s.stride}

    def provenance(self) -> dict:
        return {"spatial": {"provider": self.settings.provider, "views": list(self.view_names),
                            "mapanything": {**self.mapanything.provenance(),
                                            "world_frame": "MapAnything's, nominally view 0's camera of each timestep"}}}

    def check(self, seen: dict | None = None) -> None:
        self.mapanything.check("stages.spatial.mapanything.model", seen)

    @property
    def batch_cost(self) -> int:
        return 1  # one episode per compute call: its timesteps are batched inside

    def setup(self) -> None:
        self.mapanything.load()

    # -- per episode ----------------------------------------------------------------------------
    def prepare(self, episode, upstream: Mapping) -> Prepared:
        index, frames = read_views(self.source, episode)
        views = view_pixels(self.source, episode, self.view_names, index, frames)
        return Prepared(episode.episode_id, (index, views), cost=len(index))

    def compute(self, items: list[Prepared]) -> list[dict[str, np.ndarray]]:
        return [self._episode(*it.payload) for it in items]

    def _episode(self, index: np.ndarray, views: list[np.ndarray]) -> dict[str, np.ndarray]:
        from ..encoders.base import oom_error_type

        k = self.settings.frames_per_batch
        chunks = []
        for a in range(0, len(index), k):
            try:
                chunks.append(self._rows(index[a:a + k], self._mapanything(index[a:a + k], [v[a:a + k] for v in views])))
            except oom_error_type():
                raise Quarantine(f"out of GPU memory on frames {index[a]}..{index[min(a + k, len(index)) - 1]} "
                                 f"({len(views)} views); lower stages.spatial.frames_per_batch") from None
        return {n: np.concatenate([c[n] for c in chunks]) for n in chunks[0]}

    def _mapanything(self, index, views) -> dict[str, np.ndarray]:
        try:
            out = self.mapanything.infer(views)
        except (ValueError, RuntimeError) as e:
            if len(index) > 1:  # find the timestep that fails, so that the reason names it
                for t in range(len(index)):
                    self._mapanything(index[t:t + 1], [v[t:t + 1] for v in views])
            raise Quarantine(f"frame {int(index[0])}: MapAnything failed on views {', '.join(self.view_names)}: "
                             f"{type(e).__name__}: {e}") from None
        got = tuple(out["depth_z"].shape[2:])
        if got != tuple(self.settings.image_size):
            raise Quarantine(f"views preprocess to {got[0]}x{got[1]} (HxW) but stages.spatial.image_size is "
                             f"{list(self.settings.image_size)}; give each camera resolution its own dataset")
        for name in ("pts3d", "depth_z", "intrinsics", "camera_poses", "conf", "metric_scaling_factor"):
            bad = ~np.isfinite(out[name].reshape(len(index), -1) if name == "metric_scaling_factor"
                               else out[name].reshape(len(index), len(views), -1)).all(-1)
            if bad.any():
                t = int(np.argwhere(bad)[0][0])
                which = "" if bad.ndim == 1 else f", view {self.view_names[int(np.argwhere(bad)[0][1])]!r}"
                raise Quarantine(f"frame {int(index[t])}{which}: MapAnything returned NaN or infinite {name}")
        return out

    def _rows(self, index, out) -> dict[str, np.ndarray]:
        st, b = self.settings.stride, len(index)
        rows = {"frame_index": np.asarray(index, np.int64),
                "view_index": np.broadcast_to(camera_numbers(self.source, self.view_names), (b, len(self.view_names))).copy(),
                "stride": np.full(b, st, np.int64),
                "pts3d": to_f16(out["pts3d"][:, :, ::st, ::st]), "depth_z": to_f16(out["depth_z"][:, :, ::st, ::st]),
                "conf": to_f16(out["conf"][:, :, ::st, ::st]), "mask": np.ascontiguousarray(out["mask"][:, :, ::st, ::st]),
                "intrinsics": out["intrinsics"].astype(np.float32), "camera_poses": out["camera_poses"].astype(np.float32),
                "metric_scaling_factor": out["metric_scaling_factor"].astype(np.float32)}
        if "features" in out:
            rows["features"] = to_f16(out["features"])
        return rows


def to_f16(a) -> np.ndarray:
    """fp16 with values beyond its range clipped (confidences are unbounded)."""
    return np.clip(np.asarray(a, np.float32), -F16_MAX, F16_MAX).astype(np.float16)


def _feature_dim(model: str) -> int:
    """Width of the multi-view transformer's features from the checkpoint's config.json
    (``info_sharing_config.module_args.dim``, the constructor argument MapAnything saves; the
    stand-in's ``dim``); MapAnything V1.1's 1536 when not on disk yet."""
    import json

    from ..encoders.weights import local_model_dir

    d = local_model_dir(model)
    cfg = json.loads((d / "config.json").read_text()) if d is not None and (d / "config.json").exists() else {}
    args = (cfg.get("info_sharing_config") or {}).get("module_args") or {}
    return int(args.get("dim") or cfg.get("dim") or 1536)
