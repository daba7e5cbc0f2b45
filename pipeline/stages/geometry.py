"""``geometry``: cameras, depth and world points of every sampled frame of a video episode.

Two providers write the same spec (``cache_specs/specs/geometry.py``):
    vggt  VGGT over all N_m sampled frames of the episode in one forward pass
    gt    ground truth from the source (simulator depth, poses, intrinsics), unprojected
Both express the world in the first sampled camera's frame, so keyframes, planar poses and plots
never care which provider built the cache.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Literal, Mapping

import numpy as np

from navcache.cache_specs.specs.geometry import SPEC, SPEC_WITH_TOKENS

from ..camera import relative_to_first, unproject
from ..encoders.vggt import VGGTAdapter, VGGTSettings, processed_size
from ..errors import ConfigError, Quarantine
from .base import Prepared, Stage

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

    def __post_init__(self):
        if self.provider not in ("vggt", "gt"):
            raise ValueError(f"provider must be 'vggt' or 'gt', got {self.provider!r}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be [H, W] of positive ints, got {list(self.image_size)}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.provider == "gt" and self.vggt.keep_tokens:
            raise ValueError("vggt.keep_tokens needs provider 'vggt' (ground truth has no tokens)")


class GeometryStage(Stage):
    name = "geometry"
    code_version = "1"
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
        d = {"h": math.ceil(h / s), "w": math.ceil(w / s)}
        if self._tokens:
            embed, patch = _vggt_arch(self.settings.vggt.model)
            pool = self.settings.vggt.token_pool
            d.update(Th=(h // patch) // pool, Tw=(w // patch) // pool, C=2 * embed)
        return d

    def identity(self) -> dict:
        s = self.settings
        ident = {"provider": s.provider, "image_size": list(s.image_size), "stride": s.stride}
        if self.adapter is not None:
            ident["vggt"] = {**self.adapter.identity(), "keep_tokens": s.vggt.keep_tokens, "token_pool": s.vggt.token_pool}
        return ident

    def provenance(self) -> dict:
        if self.adapter is None:
            return {"geometry": {"provider": "gt", "note": "ground truth from the source's .gt.npz sidecars"}}
        return {"geometry": {"provider": "vggt", **self.adapter.provenance()}}

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
        frames = self.source.read_frames(episode)
        real = ~frames.padded  # black front-padding frames (NaVILA) would only confuse VGGT
        if not real.any():
            raise Quarantine("no real frame to run VGGT on")
        pixels, index = frames.pixels[real], frames.indices[real]
        got = processed_size(*pixels.shape[1:3])
        if tuple(got) != tuple(self.settings.image_size):
            raise Quarantine(
                f"frames {pixels.shape[2]}x{pixels.shape[1]} preprocess to {got[0]}x{got[1]} (HxW) but "
                f"stages.geometry.image_size is {list(self.settings.image_size)}; give each resolution its own dataset"
            )
        from ..encoders.vggt import preprocess_crop

        return Prepared(episode.episode_id, (preprocess_crop(pixels), index.astype(np.int64)), cost=len(index))

    def compute(self, items: list[Prepared]) -> list[dict[str, np.ndarray]]:
        return [it.payload if isinstance(it.payload, dict) else self._vggt(it) for it in items]

    def _vggt(self, item: Prepared) -> dict[str, np.ndarray]:
        import torch

        images, frame_index = item.payload
        try:
            out = self.adapter.infer(images)
        except torch.OutOfMemoryError:
            n, _, h, w = images.shape
            raise Quarantine(
                f"out of GPU memory running VGGT on N_m={n} frames at {h}x{w}; lower the source option "
                f"num_frames for long videos or use a larger GPU"
            ) from None
        for name in ("extrinsic", "intrinsic", "depth", "world_points"):
            if not np.isfinite(out[name]).all():
                # e.g. a zero predicted field of view gives an infinite focal length
                raise Quarantine(f"VGGT returned NaN or infinite {name} for this episode")
        s = self.settings.stride
        arrays = {
            "frame_index": frame_index,
            "extrinsic": out["extrinsic"].astype(np.float32),
            "intrinsic": out["intrinsic"].astype(np.float32),
            "depth": _f16(out["depth"][:, ::s, ::s]),
            "depth_conf": _f16(out["depth_conf"][:, ::s, ::s]),
            "world_points": _f16(out["world_points"][:, ::s, ::s]),
            "world_points_conf": _f16(out["world_points_conf"][:, ::s, ::s]),
        }
        if self._tokens:
            arrays["tokens"] = _f16(out["tokens"])
        return arrays

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
        points = unproject(np.where(valid_full, depth, 0.0), intr, extr, s)
        valid = valid_full[:, ::s, ::s]
        points[~valid] = 0.0
        if not np.isfinite(points).all():
            raise Quarantine("non-finite world point from the ground truth (check its intrinsics/extrinsics)")
        conf = valid.astype(np.float16)
        return {
            "frame_index": np.asarray(self.record(episode)["sample_indices"], np.int64),
            "extrinsic": extr.astype(np.float32),
            "intrinsic": intr.astype(np.float32),
            "depth": _f16(np.where(valid, depth[:, ::s, ::s], 0.0)),
            "depth_conf": conf,
            "world_points": _f16(points),
            "world_points_conf": conf.copy(),
        }


def _f16(a) -> np.ndarray:
    """fp16 with values beyond its range clipped (VGGT confidences are 1 + exp(x), unbounded)."""
    return np.clip(np.asarray(a, np.float32), -F16_MAX, F16_MAX).astype(np.float16)


def _vggt_arch(model: str) -> tuple[int, int]:
    """(embed_dim, patch_size) from the checkpoint's config.json; VGGT-1B's when not on disk yet."""
    from ..encoders.weights import local_model_dir

    d = local_model_dir(model)
    cfg = json.loads((d / "config.json").read_text()) if d is not None and (d / "config.json").exists() else {}
    return int(cfg.get("embed_dim", 1024)), int(cfg.get("patch_size", 14))
