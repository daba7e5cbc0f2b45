"""``geometry``: cameras, depth and world points of every sampled frame of a video episode.

Two providers write the same spec (``cache_specs/specs/geometry.py``):
    vggt  VGGT over all N_m sampled frames of the episode in one forward pass
    gt    ground truth from the source (simulator depth, poses, intrinsics), unprojected
Both express the world in the first sampled camera's frame, so planar poses and plots never care
which provider built the cache (VGGT's predictions are re-expressed in it exactly: extrinsic[0] is
[I | 0]).

Space-aware keyframes need each frame's voxel set (``pipeline/keyframes.py``); it is computed here,
from the provider's full-resolution float32 maps before striding and fp16 storage, exactly as
Spatial-MLLM computes it from VGGT's outputs (VGGT: on its own world points, before the
re-expression, as Spatial-MLLM), and stored with the rows, so the keyframes stage gives
Spatial-MLLM's picks whatever ``stride`` is.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Literal, Mapping

import numpy as np

from navcache.cache_specs.specs.geometry import SPEC, SPEC_WITH_TOKENS

from ..camera import relative_to_first, to_homogeneous, unproject
from ..encoders.vggt import VGGTAdapter, VGGTSettings, decode_target, processed_size
from ..keyframes import voxel_rows
from ..errors import ConfigError, Quarantine
from .base import Computed, Prepared, Stage

F16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class GeometrySettings:
    provider: Literal["vggt", "gt"] = "vggt"
    vggt: VGGTSettings = field(default_factory=VGGTSettings)
    #: (H, W) of the model input every episode must have (vggt: crop-mode size of the video,
    #: 518x518 for 4:3 or squarer; gt: the ground truth's native size). Mismatches are quarantined.
    image_size: tuple[int, int] = (518, 518)
    #: keep every stride-th pixel of the maps (1 = all; 518x518x128 frames is ~400 MB/episode in fp16)
    stride: int = 4
    #: capacity of the per-frame voxel sets kept for the keyframes stage (int32 ids, -1 padded;
    #: 64 KB a frame before compression). A frame seeing more voxels makes its episode's keyframes
    #: quarantined with a message naming this field; frames of at most this many pixels never do.
    max_frame_voxels: int = 16384
    #: vggt: an episode whose N_m frames run out of GPU memory is quarantined (None), or rerun on
    #: at most this many evenly spaced frames (first and last kept), halved again while it does
    #: not fit; its part.json entry then records the frames kept (``meta.frames_on_oom``)
    max_frames_on_oom: int | None = None

    def __post_init__(self):
        if self.provider not in ("vggt", "gt"):
            raise ValueError(f"provider must be 'vggt' or 'gt', got {self.provider!r}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be [H, W] of positive ints, got {list(self.image_size)}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if isinstance(self.max_frame_voxels, bool) or not isinstance(self.max_frame_voxels, int) or self.max_frame_voxels < 1:
            raise ValueError(f"max_frame_voxels must be an integer >= 1, got {self.max_frame_voxels!r}")
        if self.max_frames_on_oom is not None and (isinstance(self.max_frames_on_oom, bool) or self.max_frames_on_oom < 1):
            raise ValueError(f"max_frames_on_oom must be an integer >= 1 or null, got {self.max_frames_on_oom!r}")
        if self.provider == "gt" and self.vggt.keep_tokens:
            raise ValueError("vggt.keep_tokens needs provider 'vggt' (ground truth has no tokens)")


class GeometryStage(Stage):
    name = "geometry"
    setup_ahead = True
    # 2: per-frame voxel sets from the full-resolution float32 maps; VGGT re-expressed in the first camera
    code_version = "2"
    # what is decoded, and the ground-truth sidecar for either provider (its file is hashed with
    # the episode's files anyway; the field keeps fingerprints of existing caches)
    uses = ("frames", "gt_geometry")
    Settings = GeometrySettings

    def __init__(self, settings, source, source_options):
        super().__init__(settings, source, source_options)
        self.adapter = VGGTAdapter(settings.vggt) if settings.provider == "vggt" else None
        if self.adapter is None and not hasattr(source, "load_gt_geometry"):
            raise ConfigError(
                f"stages.geometry.provider 'gt' needs a source with ground-truth geometry (the videos source's "
                f".gt.npz sidecars); source {getattr(source, 'kind', type(source).__name__)!r} has none: use provider 'vggt'"
            )

    @property
    def _tokens(self) -> bool:
        return self.adapter is not None and self.settings.vggt.keep_tokens

    def spec(self):
        return SPEC_WITH_TOKENS if self._tokens else SPEC

    def dims(self) -> dict[str, int]:
        (h, w), s = self.settings.image_size, self.settings.stride
        d = {"h": math.ceil(h / s), "w": math.ceil(w / s), "V": self.settings.max_frame_voxels}
        if self._tokens:
            embed, patch = _vggt_arch(self.settings.vggt.model)
            pool = self.settings.vggt.token_pool
            d.update(Th=(h // patch) // pool, Tw=(w // patch) // pool, C=2 * embed)
        return d

    def identity(self) -> dict:
        s = self.settings
        ident = {"provider": s.provider, "image_size": list(s.image_size), "stride": s.stride, "max_frame_voxels": s.max_frame_voxels}
        if self.adapter is not None:
            ident["vggt"] = {**self.adapter.identity(), "keep_tokens": s.vggt.keep_tokens, "token_pool": s.vggt.token_pool}
            if s.max_frames_on_oom is not None:  # absent otherwise: existing caches keep their fingerprints
                ident["max_frames_on_oom"] = s.max_frames_on_oom
        return ident

    def provenance(self) -> dict:
        # details (voxel sets from the full-resolution float32 maps) are in the spec's doc
        if self.adapter is None:
            return {"geometry": {"provider": "gt", "note": "ground truth from the source's .gt.npz sidecars",
                                 "world_frame": "first sampled camera"}}
        world = "first camera (VGGT re-expressed exactly)"  # extrinsic[0] = [I | 0]; voxels on VGGT's own frame
        geo = {"provider": "vggt", **self.adapter.provenance(), "world_frame": world}
        if self.settings.max_frames_on_oom is not None:
            geo["on_oom"] = (f"episodes out of GPU memory rerun on at most {self.settings.max_frames_on_oom} evenly spaced "
                             "frames (halved while they do not fit); such episodes list them in meta.frames_on_oom")
        return {"geometry": geo}

    def check(self, seen: dict | None = None) -> None:
        if self.adapter is not None:  # the gt provider needs no model
            self.adapter.check(f"stages.{self.name}.vggt.model", seen)

    @property
    def batch_cost(self) -> int:
        return 1  # VGGT sees one whole episode per forward pass; never mix episodes

    def setup(self) -> None:
        if self.adapter is not None:
            self.adapter.load()

    # -- per episode ----------------------------------------------------------------------------
    def prepare(self, episode, upstream: Mapping) -> Prepared:
        if self.adapter is None:
            return Prepared(episode.episode_id, self._from_gt(episode), cost=len(self.record(episode)["sample_indices"]))
        vs = self.settings.vggt
        if vs.preprocess == "fast":  # reduced decode, never below VGGT's 518 width
            frames = self.source.read_frames(episode, resize_to=decode_target(vs.spatial_mllm), fit=True)
        else:
            frames = self.source.read_frames(episode)
        real = ~frames.padded  # black front-padding frames (NaVILA) would only confuse VGGT
        if not real.any():
            raise Quarantine("no real frame to run VGGT on")
        pixels, index = frames.pixels[real], frames.indices[real]
        h, w = pixels.shape[1:3]
        rotate = self.settings.vggt.spatial_mllm and h > w  # Spatial-MLLM turns portrait frames landscape
        got = processed_size(*((w, h) if rotate else (h, w)))
        if tuple(got) != tuple(self.settings.image_size):
            turned = " (rotated: vggt.spatial_mllm)" if rotate else ""
            raise Quarantine(
                f"frames {w}x{h} preprocess to {got[0]}x{got[1]} (HxW){turned} but "
                f"stages.geometry.image_size is {list(self.settings.image_size)}; give each resolution its own dataset"
            )
        images = self.adapter.preprocess(pixels)  # uint8 for a CUDA model (divided there), else float32
        return Prepared(episode.episode_id, (images, index.astype(np.int64)), cost=len(index))

    def compute(self, items: list[Prepared]) -> list[dict[str, np.ndarray]]:
        return [it.payload if isinstance(it.payload, dict) else self._vggt(it) for it in items]

    def _vggt(self, item: Prepared) -> dict[str, np.ndarray] | Computed:
        images, frame_index = item.payload
        out, keep = self._infer_fitting(images)
        if keep is not None:
            frame_index = frame_index[keep]
        for name in ("extrinsic", "intrinsic", "depth", "world_points"):
            if not np.isfinite(out[name]).all():
                # e.g. a zero predicted field of view gives an infinite focal length
                raise Quarantine(f"VGGT returned NaN or infinite {name} for this episode")
        s = self.settings.stride
        # Spatial-MLLM selects on VGGT's float32 full-resolution points in VGGT's own world frame
        voxels = voxel_rows(out["world_points"], out["world_points_conf"], self.settings.max_frame_voxels)
        extrinsic, points = _in_first_camera(out["extrinsic"], out.pop("world_points")[:, ::s, ::s])
        arrays = {
            "frame_index": frame_index,
            "extrinsic": extrinsic,
            "intrinsic": out["intrinsic"].astype(np.float32),
            "depth": _f16(out["depth"][:, ::s, ::s]),
            "depth_conf": _f16(out["depth_conf"][:, ::s, ::s]),
            "world_points": points,
            "world_points_conf": _f16(out["world_points_conf"][:, ::s, ::s]),
            **voxels,
        }
        if self._tokens:
            arrays["tokens"] = _f16(out["tokens"])
        if keep is None:
            return arrays
        note = {"n_m": len(images), "kept": len(keep), "max_frames_on_oom": self.settings.max_frames_on_oom}
        return Computed(arrays, {"frames_on_oom": note})

    def _infer_fitting(self, images) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """VGGT on all N_m frames of ``images`` [N_m, 3, H, W], or, with ``max_frames_on_oom``, on
        the largest evenly spaced subset that fits; returns (outputs, kept positions or None for
        all). Quarantine naming N_m and the allocation that failed when nothing fits."""
        from ..encoders.base import memory_needed, oom_error_type

        oom = oom_error_type()
        n, _, h, w = images.shape
        try:
            return self.adapter.infer(images), None
        except oom as e:
            needed = memory_needed(e)
        cap, tried = self.settings.max_frames_on_oom, []
        k = min(cap, n - 1) if cap is not None else 0
        while k >= 1:
            keep = np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))
            try:
                return self.adapter.infer(images[keep]), keep
            except oom:
                tried.append(len(keep))
            k = len(keep) // 2
        alloc = f" (an allocation of {needed} failed)" if needed else ""
        retried = f"; rerun on {', '.join(map(str, tried))} frames, which did not fit either" if tried else ""
        hint = "" if cap is not None else ", set stages.geometry.max_frames_on_oom to rerun it on fewer frames"
        raise Quarantine(
            f"out of GPU memory running VGGT on N_m={n} frames at {h}x{w}{alloc}{retried}; lower the source option "
            f"num_frames for long videos{hint} or use a larger GPU"
        )

    def _from_gt(self, episode) -> dict[str, np.ndarray]:
        gt = self.source.load_gt_geometry(episode)  # arrays at the sampled frames only
        depth = np.asarray(gt["depth"], np.float64)  # [S,H,W]
        if depth.shape[1:] != tuple(self.settings.image_size):
            raise Quarantine(
                f"ground-truth depth is {depth.shape[1]}x{depth.shape[2]} (HxW) but stages.geometry.image_size is "
                f"{list(self.settings.image_size)}"
            )
        valid_full = np.isfinite(depth) & (depth > 0)
        if not valid_full.any():
            raise Quarantine("ground-truth depth has no valid pixel (all zero, negative or NaN) in any sampled frame")
        extr = relative_to_first(gt["extrinsics"])
        intr = np.broadcast_to(np.asarray(gt["intrinsics"], np.float64), (len(depth), 3, 3))
        s = self.settings.stride
        full = _unproject_f32(np.where(valid_full, depth, 0.0), intr, extr)  # [S,H,W,3]
        full[~valid_full] = 0.0
        points, valid = full[:, ::s, ::s], valid_full[:, ::s, ::s]
        if not np.isfinite(points).all():
            raise Quarantine("non-finite world point from the ground truth (check its intrinsics/extrinsics)")
        voxels = voxel_rows(full, valid_full.astype(np.float32), self.settings.max_frame_voxels)
        conf = valid.astype(np.float16)
        return {
            "frame_index": np.asarray(self.record(episode)["sample_indices"], np.int64),
            "extrinsic": extr.astype(np.float32),
            "intrinsic": intr.astype(np.float32),
            "depth": _f16(np.where(valid, depth[:, ::s, ::s], 0.0)),
            "depth_conf": conf,
            "world_points": _f16(points),
            "world_points_conf": conf.copy(),
            **voxels,
        }


def _unproject_f32(depth: np.ndarray, intr: np.ndarray, extr: np.ndarray) -> np.ndarray:
    """``unproject`` at full resolution, frame by frame (float64 maths, float32 result) -> [S,H,W,3].

    One frame at a time keeps the float64 temporaries to a frame; the float32 maps are what the
    voxel sets are computed from (and what the stored fp16 maps are rounded from, as before).
    """
    s, h, w = depth.shape
    out = np.empty((s, h, w, 3), np.float32)
    for f in range(s):
        out[f] = unproject(depth[f : f + 1], intr[f : f + 1], extr[f : f + 1])[0]
    return out


def _in_first_camera(extrinsic: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """VGGT's cameras [S,3,4] and world points [S,h,w,3] re-expressed in the first camera's frame.

    VGGT's world is only approximately its first camera (its extrinsic[0] is predicted, not fixed).
    With E0 = [R0 | t0]: E_i' = E_i E0^-1 (row 0 set to [I | 0] exactly) and p' = R0 p + t0, in
    float64 frame by frame -> float32 extrinsics, fp16 points. Camera-frame coordinates E_i p are
    unchanged, so depth, intrinsics and points stay consistent.
    """
    e = to_homogeneous(np.asarray(extrinsic, np.float64))
    first = e[0]
    rel = (e @ np.linalg.inv(first))[:, :3, :]
    rel[0] = np.eye(3, 4)
    rot, shift = first[:3, :3], first[:3, 3]
    out = np.empty(points.shape, np.float16)
    for f in range(len(points)):
        out[f] = _f16(np.asarray(points[f], np.float64) @ rot.T + shift)
    return rel.astype(np.float32), out


def _f16(a) -> np.ndarray:
    """fp16 with values beyond its range clipped (VGGT confidences are 1 + exp(x), unbounded)."""
    return np.clip(np.asarray(a, np.float32), -F16_MAX, F16_MAX).astype(np.float16)


def _vggt_arch(model: str) -> tuple[int, int]:
    """(embed_dim, patch_size) from the checkpoint's config.json; VGGT-1B's when not on disk yet."""
    from ..encoders.weights import local_model_dir

    d = local_model_dir(model)
    cfg = json.loads((d / "config.json").read_text()) if d is not None and (d / "config.json").exists() else {}
    return int(cfg.get("embed_dim", 1024)), int(cfg.get("patch_size", 14))
