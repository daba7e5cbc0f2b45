"""``spatial``: frozen multi-view 3-D perception per sampled timestep, for 3-D VLA heads.

The views of a timestep are the episode's cameras at that timestep (``source.cameras`` and
``source.read_camera``, e.g. LeRobot's two LIBERO cameras), or the stage's ``views`` subset in
that order; sources without cameras give one view (``"frame"``). The resolved view set enters
the fingerprint, so adding a camera to a dataset recomputes its spatial cache.

Providers (spec ``cache_specs/specs/spatial.py``):
    mapanything  MapAnything over the V views of each timestep (one reconstruction per
                 timestep; ``frames_per_batch`` timesteps per ``infer`` call): points, depth,
                 intrinsics, cam2world poses, confidence, mask at ``stride``, optional pooled
                 multi-view features
    llava3d      CLIP patch features (layer -2, no CLS) of every view plus each patch's world xyz
                 by LLaVA-3D's rule, from MapAnything's depth + pose of the same views
                 (``llava3d.xyz_from: mapanything``, full-resolution maps) or the source's ground
                 truth (``gt``)

Bad input never crashes a run: views of different sizes within an episode, a model error on a
timestep, NaN/inf outputs, a model input size other than ``image_size``: the episode is
quarantined with the frame, the view and the reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Mapping

import numpy as np

from navcache.cache_specs.specs.spatial import SPEC, SPEC_LLAVA3D, SPEC_WITH_FEATURES

from ..camera import to_homogeneous
from ..encoders.llava3d import ClipPatchEncoder, Llava3DSettings, patch_xyz
from ..encoders.mapanything import MapAnythingAdapter, MapAnythingSettings
from ..errors import ConfigError, Quarantine
from .base import Prepared, Stage

F16_MAX = float(np.finfo(np.float16).max)
SINGLE_VIEW = "frame"


@dataclass(frozen=True)
class SpatialSettings:
    provider: Literal["mapanything", "llava3d"] = "mapanything"
    #: camera keys of a timestep's views, in this order; empty = every camera of the source
    views: tuple[str, ...] = ()
    mapanything: MapAnythingSettings = field(default_factory=MapAnythingSettings)
    llava3d: Llava3DSettings = field(default_factory=Llava3DSettings)
    #: (H, W) of MapAnything's input (its 518-px bucket for the cameras' aspect); others quarantined
    image_size: tuple[int, int] = (518, 518)
    #: keep every stride-th pixel of the stored maps (1 = all)
    stride: int = 4
    #: timesteps per model call (speed and memory only; not in the fingerprint)
    frames_per_batch: int = 8

    def __post_init__(self):
        if self.provider not in ("mapanything", "llava3d"):
            raise ValueError(f"provider must be 'mapanything' or 'llava3d', got {self.provider!r}")
        if len(set(self.views)) != len(self.views):
            raise ValueError(f"views must not repeat a camera, got {list(self.views)}")
        if len(self.image_size) != 2 or min(self.image_size) < 14 or any(v % 14 for v in self.image_size):
            raise ValueError(f"image_size must be [H, W], multiples of 14, got {list(self.image_size)}")
        for name in ("stride", "frames_per_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")


class SpatialStage(Stage):
    name = "spatial"
    code_version = "1"
    uses = ("frames", "gt_geometry")
    Settings = SpatialSettings

    def __init__(self, settings, source, source_options):
        super().__init__(settings, source, source_options)
        s = settings
        self.clip = ClipPatchEncoder(s.llava3d) if s.provider == "llava3d" else None
        needs_ma = s.provider == "mapanything" or s.llava3d.xyz_from == "mapanything"
        self.mapanything = MapAnythingAdapter(s.mapanything) if needs_ma else None
        if self.clip is not None and s.llava3d.xyz_from == "gt" and not hasattr(source, "load_gt_geometry"):
            raise ConfigError(f"stages.spatial.llava3d.xyz_from 'gt' needs a source with ground-truth geometry; source "
                              f"{getattr(source, 'kind', type(source).__name__)!r} has none: use xyz_from 'mapanything'")
        self.view_names = self._views()

    def _views(self) -> tuple[str, ...]:
        cams = tuple(getattr(self.source, "cameras", ()) or ())
        if not cams:
            if self.settings.views not in ((), (SINGLE_VIEW,)):
                raise ConfigError(f"stages.spatial.views: source {self.source.kind!r} has one view ({SINGLE_VIEW!r}), "
                                  f"got {list(self.settings.views)}")
            return (SINGLE_VIEW,)
        bad = [v for v in self.settings.views if v not in cams]
        if bad:
            raise ConfigError(f"stages.spatial.views: {bad[0]!r} is not a camera of this dataset (valid: {', '.join(cams)})")
        if self.settings.llava3d.xyz_from == "gt" and self.clip is not None and len(self.settings.views or cams) > 1:
            raise ConfigError("stages.spatial.llava3d.xyz_from 'gt': ground truth covers one camera; set views to one camera")
        return tuple(self.settings.views) or cams

    # -- planning -----------------------------------------------------------------------------
    def spec(self):
        if self.clip is not None:
            return SPEC_LLAVA3D
        return SPEC_WITH_FEATURES if self.settings.mapanything.keep_features else SPEC

    def dims(self) -> dict[str, int]:
        d = {"V": len(self.view_names)}
        if self.clip is not None:
            return {**d, "P": self.clip.grid(), "D": self.clip.hidden_size()}
        (h, w), st = self.settings.image_size, self.settings.stride
        d.update(h=math.ceil(h / st), w=math.ceil(w / st))
        if self.settings.mapanything.keep_features:
            d.update(G=self.settings.mapanything.feature_grid, C=_feature_dim(self.settings.mapanything.model))
        return d

    def identity(self) -> dict:
        s = self.settings
        ident: dict = {"provider": s.provider, "views": list(self.view_names), "image_size": list(s.image_size)}
        if self.mapanything is not None:
            ident["mapanything"] = self.mapanything.identity()
        if self.clip is not None:
            ident.update(llava3d=self.clip.identity(), xyz_from=s.llava3d.xyz_from)
        else:
            ident["stride"] = s.stride
        return ident

    def provenance(self) -> dict:
        prov: dict = {"provider": self.settings.provider, "views": list(self.view_names)}
        if self.mapanything is not None:
            prov["mapanything"] = {**self.mapanything.provenance(), "world_frame": "MapAnything's, nominally view 0's camera of each timestep"}
        if self.clip is not None:
            prov["llava3d"] = {**self.clip.provenance(), "xyz_from": self.settings.llava3d.xyz_from,
                               "rule": "LLaVA-3D unproject + nearest to the patch grid (spec doc)"}
        return {"spatial": prov}

    def check(self, seen: dict | None = None) -> None:
        if self.mapanything is not None:
            self.mapanything.check("stages.spatial.mapanything.model", seen)
        if self.clip is not None:
            self.clip.check("stages.spatial.llava3d.model", seen)

    @property
    def batch_cost(self) -> int:
        return 1  # one episode per compute call: its timesteps are batched inside

    def setup(self) -> None:
        for enc in (self.mapanything, self.clip):
            if enc is not None:
                enc.load()

    # -- per episode ----------------------------------------------------------------------------
    def prepare(self, episode, upstream: Mapping) -> Prepared:
        frames = self.source.read_frames(episode)
        real = ~frames.padded
        if not real.any():
            raise Quarantine("no real frame to run the spatial stage on")
        index = frames.indices[real].astype(np.int64)
        if self.view_names == (SINGLE_VIEW,):
            views = [frames.pixels[real]]
        else:
            first = getattr(self.source, "camera", None)
            views = [frames.pixels[real] if cam == first else self.source.read_camera(episode, cam, index.tolist())
                     for cam in self.view_names]
        gt = self.source.load_gt_geometry(episode) if self.clip is not None and self.settings.llava3d.xyz_from == "gt" else None
        if gt is not None and not np.array_equal(np.asarray(gt["indices"]), index):
            raise Quarantine("ground-truth geometry covers other frames than the sampled ones")
        return Prepared(episode.episode_id, (index, views, gt), cost=len(index))

    def compute(self, items: list[Prepared]) -> list[dict[str, np.ndarray]]:
        return [self._episode(*it.payload) for it in items]

    def _episode(self, index: np.ndarray, views: list[np.ndarray], gt: dict | None) -> dict[str, np.ndarray]:
        from ..encoders.base import oom_error_type

        k = self.settings.frames_per_batch
        chunks = []
        for a in range(0, len(index), k):
            try:
                chunks.append(self._chunk(index[a:a + k], [v[a:a + k] for v in views], None if gt is None else
                                          {n: np.asarray(gt[n])[a:a + k] for n in ("depth", "extrinsics", "intrinsics")}))
            except oom_error_type():
                raise Quarantine(f"out of GPU memory on frames {index[a]}..{index[min(a + k, len(index)) - 1]} "
                                 f"({len(views)} views); lower stages.spatial.frames_per_batch") from None
        return {n: np.concatenate([c[n] for c in chunks]) for n in chunks[0]}

    def _chunk(self, index, views, gt) -> dict[str, np.ndarray]:
        geo = self._mapanything(index, views) if self.mapanything is not None else None
        if self.clip is None:
            return self._ma_rows(index, geo)
        return self._llava3d_rows(index, views, geo, gt)

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

    def _ma_rows(self, index, out) -> dict[str, np.ndarray]:
        st = self.settings.stride
        rows = {"frame_index": np.asarray(index, np.int64),
                "pts3d": _f16(out["pts3d"][:, :, ::st, ::st]), "depth_z": _f16(out["depth_z"][:, :, ::st, ::st]),
                "conf": _f16(out["conf"][:, :, ::st, ::st]), "mask": np.ascontiguousarray(out["mask"][:, :, ::st, ::st]),
                "intrinsics": out["intrinsics"].astype(np.float32), "camera_poses": out["camera_poses"].astype(np.float32),
                "metric_scaling_factor": out["metric_scaling_factor"].astype(np.float32)}
        if "features" in out:
            rows["features"] = _f16(out["features"])
        return rows

    def _llava3d_rows(self, index, views, geo, gt) -> dict[str, np.ndarray]:
        b, nv = len(index), len(views)
        feats = self.clip.encode(np.concatenate(views))  # [V*B, P, P, D], view-major
        p = feats.shape[1]
        feats = feats.reshape(nv, b, p, p, -1).transpose(1, 0, 2, 3, 4)
        if not np.isfinite(feats).all():
            t, v = np.argwhere(~np.isfinite(feats).reshape(b, nv, -1).all(-1))[0]
            raise Quarantine(f"frame {int(index[t])}, view {self.view_names[v]!r}: CLIP returned NaN or infinite features")
        if geo is not None:
            depth, intr, c2w = geo["depth_z"], geo["intrinsics"], geo["camera_poses"]
        else:
            depth, intr = gt["depth"][:, None], gt["intrinsics"][:, None]
            c2w = np.linalg.inv(to_homogeneous(np.asarray(gt["extrinsics"], np.float64)))[:, None]
        crop = self.clip.crop_size()
        xyz = np.zeros((b, nv, p, p, 3), np.float32)
        valid = np.zeros((b, nv, p, p), bool)
        for t in range(b):
            for v in range(nv):
                xyz[t, v], valid[t, v] = patch_xyz(depth[t, v], intr[t, v], c2w[t, v], crop, p)
        return {"frame_index": np.asarray(index, np.int64), "patch_features": _f16(feats), "patch_xyz": xyz, "patch_valid": valid}


def _f16(a) -> np.ndarray:
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
