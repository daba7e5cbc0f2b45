"""``spatial-llava3d``: LLaVA-3D's "3D patches" per sampled timestep (spec ``spatial_llava3d``).

CLIP patch features (layer ``select_layer``, no CLS) of every view plus each patch's world xyz by
LLaVA-3D's rule (``encoders/llava3d.py``), from depth + intrinsics + cam2world pose of
``xyz_from``:

    mapanything  the ``spatial`` stage's cache (this stage consumes it, like ``keyframes`` consumes
                 ``geometry``): MapAnything runs once, in ``spatial``; the upstream episode
                 fingerprints enter this stage's, so any change of that cache makes this one
                 stale. The depth image is the cached map: MapAnything's input frame (its 518-px
                 bucket) at the ``spatial`` stride, fp16, with the intrinsics of that map (the
                 cached ones divided by the stride, exact since map pixel (i, j) is input pixel
                 (i*s, j*s) and both conventions put pixel centres at integers). Pixels outside
                 MapAnything's mask count as having no depth. This stage's views must be among the
                 ``spatial`` views (matched by the rows' ``view_index``), e.g. reconstruct with both
                 cameras, keep patches of one.
    gt           the source's ground truth (the videos source's ``.gt.npz``, one view), at the
                 camera's resolution.

LLaVA-3D's rule treats the depth image as covering the camera image's field of view. MapAnything's
bucket is a centre crop of the camera image to the bucket's aspect: exact for square cameras and
when the crop is along the long side only (CLIP's square crop removes that part anyway); where the
bucket is wider than the camera image relative to its height, the missing strip shifts patches
near the crop's edges by up to half that strip (docs/spatial.md).

Bad input quarantines the episode: an upstream quarantine, other frames in the ``spatial`` rows
than this stage samples, a camera missing from them, NaN/inf CLIP features.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from navcache.cache_specs.specs import get_spec

from ..camera import to_homogeneous
from ..encoders.llava3d import ClipPatchEncoder, Llava3DSettings, patch_xyz
from ..errors import ConfigError, Quarantine
from .base import Prepared, Stage
from .spatial import SINGLE_VIEW, camera_numbers, read_views, resolve_views, to_f16, view_pixels

FIELD = "stages.spatial-llava3d"


@dataclass(frozen=True)
class SpatialLlava3DSettings(Llava3DSettings):
    """The CLIP tower and ``xyz_from`` (``Llava3DSettings``) plus the views and batching."""

    #: camera keys of a timestep's views, in this order; empty = every camera of the source
    #: (with xyz_from mapanything they must be among the spatial stage's views)
    views: tuple[str, ...] = ()
    #: timesteps per CLIP call (speed and memory only; not in the fingerprint)
    frames_per_batch: int = 8

    def __post_init__(self):
        super().__post_init__()
        if len(set(self.views)) != len(self.views):
            raise ValueError(f"views must not repeat a camera, got {list(self.views)}")
        v = self.frames_per_batch
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"frames_per_batch must be an integer >= 1, got {v!r}")


def map_intrinsics(intrinsics: np.ndarray, stride: np.ndarray) -> np.ndarray:
    """Intrinsics [..., 3, 3] of MapAnything's input and strides [...] -> float64 [..., 3, 3] of the
    cached maps, which keep input pixel (i*s, j*s) as map pixel (i, j): the first two rows / s."""
    k = np.array(intrinsics, np.float64)
    k[..., :2, :] /= np.asarray(stride, np.float64)[..., None, None]
    return k


class Llava3DGeometryStage(Stage):
    """What the LLaVA-3D stages share: the views, and depth + intrinsics + cam2world per view and
    timestep from ``xyz_from`` (the ``spatial`` cache or the source's ground truth). Settings
    need ``views`` and ``xyz_from``; error messages name ``stages.<name>``."""

    def __init__(self, settings, source, source_options):
        super().__init__(settings, source, source_options)
        self.field = f"stages.{self.name}"
        self.gt = settings.xyz_from == "gt"
        # per instance: only the gt route reads the ground truth, so only it is fingerprinted by it
        self.uses = ("frames", "gt_geometry") if self.gt else ("frames",)
        self.skip_file_suffixes = () if self.gt else (".gt.npz",)
        if self.gt and not hasattr(source, "load_gt_geometry"):
            raise ConfigError(f"{self.field}.xyz_from 'gt' needs a source with ground-truth geometry; source "
                              f"{getattr(source, 'kind', type(source).__name__)!r} has none: use xyz_from 'mapanything'")
        self.view_names = resolve_views(source, settings.views, f"{self.field}.views")
        if self.gt and len(self.view_names) > 1:
            raise ConfigError(f"{self.field}.xyz_from 'gt': ground truth covers one camera; set {self.field}.views to one camera "
                              f"(of {', '.join(self.view_names)})")

    @property
    def consumes(self) -> tuple[str, ...]:
        return () if self.gt else ("spatial",)

    @property
    def batch_cost(self) -> int:
        return 1  # one episode per compute call: its timesteps are batched inside

    def read_geometry(self, episode, upstream: Mapping) -> tuple[np.ndarray, list[np.ndarray], dict[str, np.ndarray]]:
        """(frame indices int64 [T], per view uint8 [T, H, W, 3], geometry: depth [T, V, h, w],
        intrinsics [T, V, 3, 3] of that depth map, cam2world [T, V, 4, 4])."""
        index, frames = read_views(self.source, episode)
        geo = self._gt(episode, index) if self.gt else self._from_spatial(upstream["spatial"], index)
        return index, view_pixels(self.source, episode, self.view_names, index, frames), geo

    def _gt(self, episode, index: np.ndarray) -> dict[str, np.ndarray]:
        """Ground truth as [T, 1, ...] depth images, intrinsics and cam2world poses."""
        gt = self.source.load_gt_geometry(episode)
        if not np.array_equal(np.asarray(gt["indices"]), index):
            raise Quarantine("ground-truth geometry covers other frames than the sampled ones")
        c2w = np.linalg.inv(to_homogeneous(np.asarray(gt["extrinsics"], np.float64)))
        return {"depth": np.asarray(gt["depth"], np.float32)[:, None], "intrinsics": np.asarray(gt["intrinsics"], np.float64)[:, None],
                "cam2world": c2w[:, None]}

    def _from_spatial(self, rows: Mapping[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
        """The ``spatial`` rows of this stage's views as depth images (``map_view``) and poses."""
        got = np.asarray(rows["frame_index"])
        if not np.array_equal(got, index):
            raise Quarantine(f"the spatial cache holds frames {got.tolist()} but this stage samples {index.tolist()}; "
                             "both stages must see the same source options")
        have = [int(i) for i in np.asarray(rows["view_index"])[0]]
        pick = []
        for name, i in zip(self.view_names, camera_numbers(self.source, self.view_names)):
            if int(i) not in have:
                cams = tuple(getattr(self.source, "cameras", ()) or ()) or (SINGLE_VIEW,)
                raise Quarantine(f"{self.field}.views: camera {name!r} is not among the spatial cache's views "
                                 f"({', '.join(cams[j] for j in have)}); add it to stages.spatial.views")
            pick.append(have.index(int(i)))
        depth = np.asarray(rows["depth_z"])[:, pick].astype(np.float32)
        depth[~np.asarray(rows["mask"])[:, pick]] = 0.0  # outside MapAnything's mask: no depth
        stride = np.broadcast_to(np.asarray(rows["stride"])[:, None], (len(index), len(pick)))
        return {"depth": depth, "intrinsics": map_intrinsics(np.asarray(rows["intrinsics"])[:, pick], stride), "cam2world": np.asarray(rows["camera_poses"], np.float64)[:, pick]}


class SpatialLlava3DStage(Llava3DGeometryStage):
    name = "spatial-llava3d"
    setup_ahead = True
    code_version = "1"
    Settings = SpatialLlava3DSettings

    def __init__(self, settings, source, source_options):
        super().__init__(settings, source, source_options)
        self.clip = ClipPatchEncoder(settings)

    # -- planning -----------------------------------------------------------------------------
    def spec(self):
        return get_spec("spatial_llava3d")

    def dims(self) -> dict[str, int]:
        return {"V": len(self.view_names), "P": self.clip.grid(), "D": self.clip.hidden_size()}

    def identity(self) -> dict:
        return {"views": list(self.view_names), "xyz_from": self.settings.xyz_from, "clip": self.clip.identity()}

    def provenance(self) -> dict:
        return {"spatial_llava3d": {"views": list(self.view_names), "xyz_from": self.settings.xyz_from, "clip": self.clip.provenance(),
                                    "rule": "LLaVA-3D unproject + nearest to the patch grid (spec doc)"}}

    def check(self, seen: dict | None = None) -> None:
        self.clip.check(f"{FIELD}.model", seen)

    def setup(self) -> None:
        self.clip.load()

    # -- per episode ----------------------------------------------------------------------------
    def prepare(self, episode, upstream: Mapping) -> Prepared:
        index, views, geo = self.read_geometry(episode, upstream)
        return Prepared(episode.episode_id, (index, views, geo), cost=len(index))

    def compute(self, items: list[Prepared]) -> list[dict[str, np.ndarray]]:
        return [self._episode(*it.payload) for it in items]

    def _episode(self, index: np.ndarray, views: list[np.ndarray], geo: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..encoders.base import oom_error_type

        k = self.settings.frames_per_batch
        chunks = []
        for a in range(0, len(index), k):
            try:
                chunks.append(self._rows(index[a:a + k], [v[a:a + k] for v in views], {n: g[a:a + k] for n, g in geo.items()}))
            except oom_error_type():
                raise Quarantine(f"out of GPU memory on frames {index[a]}..{index[min(a + k, len(index)) - 1]} "
                                 f"({len(views)} views); lower {FIELD}.frames_per_batch") from None
        return {n: np.concatenate([c[n] for c in chunks]) for n in chunks[0]}

    def _rows(self, index, views, geo) -> dict[str, np.ndarray]:
        """index [B], views uint8 [B, H, W, 3] each, geo [B, V, ...] -> the spec's rows for B timesteps."""
        b, nv = len(index), len(views)
        feats = self.clip.encode(np.concatenate(views))  # [V*B, P, P, D], view-major
        p = feats.shape[1]
        feats = feats.reshape(nv, b, p, p, -1).transpose(1, 0, 2, 3, 4)
        if not np.isfinite(feats).all():
            t, v = np.argwhere(~np.isfinite(feats).reshape(b, nv, -1).all(-1))[0]
            raise Quarantine(f"frame {int(index[t])}, view {self.view_names[v]!r}: CLIP returned NaN or infinite features")
        crop = self.clip.crop_size()
        xyz = np.zeros((b, nv, p, p, 3), np.float32)
        valid = np.zeros((b, nv, p, p), bool)
        for t in range(b):
            for v in range(nv):
                xyz[t, v], valid[t, v] = patch_xyz(geo["depth"][t, v], geo["intrinsics"][t, v], geo["cam2world"][t, v], crop, p)
        return {"frame_index": np.asarray(index, np.int64), "patch_features": to_f16(feats), "patch_xyz": xyz, "patch_valid": valid}
