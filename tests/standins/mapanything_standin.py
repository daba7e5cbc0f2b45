"""A tiny deterministic stand-in for MapAnything (facebookresearch/map-anything), for tests: no
download, no mapanything, no uniception.

It honours the parts of MapAnything's published contract that
``pipeline.encoders.mapanything.MapAnythingAdapter`` relies on:

- ``StandInMapAnything.from_pretrained(folder)`` reading ``config.json`` (``make_standin``);
  ``model.encoder.data_norm_type`` ("dinov2") and ``model.encoder.patch_size`` (14);
- ``preprocess_inputs(views, resize_mode="fixed_mapping", norm_type, patch_size, resolution_set)``:
  uint8 [H, W, 3] views -> ``{"img": [1, 3, H', W'], "data_norm_type": [norm]}`` at the 518-px
  bucket closest to the views' mean aspect ratio (MapAnything's table, ``mapanything/utils/image.py``),
  PIL bicubic resize of the short side then centre crop, DINOv2 mean/std;
- ``model.info_sharing`` returns ``(final, [intermediates])`` whose ``.features`` are per view
  [B, C, H/14, W/14]; views mix (the mean over views enters every view), so views influence each other;
- ``model.infer(views, memory_efficient_inference, minibatch_size, use_amp, amp_dtype, apply_mask,
  mask_edges)`` -> per view ``pts3d`` [B, H, W, 3], ``pts3d_cam``, ``depth_z`` [B, H, W, 1],
  ``intrinsics`` [B, 3, 3], ``camera_poses`` [B, 4, 4] (cam2world; view 0 is the identity),
  ``conf`` [B, H, W] (>= 1), ``mask`` [B, H, W, 1] bool, ``metric_scaling_factor`` [B]. The outputs
  are geometrically consistent: ``pts3d = R @ unproject(depth_z, intrinsics) + t``; with
  ``apply_mask`` the masked pixels' depth and points are zero, as MapAnything does.

Test hooks: ``nan_below_brightness`` gives NaN depth and points for a view whose mean pixel value
(0..1) is below it; every ``infer`` call is recorded in ``model.calls`` (its keyword arguments,
the number of views and the batch size).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from navcache.pipeline.encoders.weights import PROVENANCE_FILE

CONFIG_FILE = "config.json"
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: MapAnything's 518 set (width, height) by aspect ratio key (``RESOLUTION_MAPPINGS[518]``)
BUCKETS_518 = {1.000: (518, 518), 1.321: (518, 392), 1.542: (518, 336), 1.762: (518, 294), 2.056: (518, 252),
               3.083: (518, 168), 0.757: (392, 518), 0.649: (336, 518), 0.567: (294, 518), 0.486: (252, 518)}


def preprocess_inputs(views, resize_mode="fixed_mapping", size=None, norm_type="dinov2", patch_size=14, resolution_set=518, verbose=False):
    if resize_mode != "fixed_mapping" or resolution_set != 518 or norm_type != "dinov2" or patch_size != 14:
        raise ValueError("stand-in preprocess_inputs implements fixed_mapping, 518, dinov2, patch 14 only")
    aspects = [v["img"].shape[1] / v["img"].shape[0] for v in views]
    key = min(BUCKETS_518, key=lambda k: abs(k - sum(aspects) / len(aspects)))
    tw, th = BUCKETS_518[key]
    out = []
    for v in views:
        img = Image.fromarray(np.asarray(v["img"], np.uint8))
        scale = max(tw / img.width, th / img.height)
        rw, rh = max(tw, round(img.width * scale)), max(th, round(img.height * scale))
        img = img.resize((rw, rh), Image.Resampling.BICUBIC)
        left, top = (rw - tw) // 2, (rh - th) // 2
        a = np.asarray(img.crop((left, top, left + tw, top + th)), np.float32) / 255.0
        x = (torch.from_numpy(a).permute(2, 0, 1) - torch.tensor(_MEAN).view(3, 1, 1)) / torch.tensor(_STD).view(3, 1, 1)
        out.append({"img": x[None], "data_norm_type": [norm_type]})
    return out


class _InfoSharing(nn.Module):
    def __init__(self, dim: int, depth: int):
        super().__init__()
        self.frame = nn.ModuleList(nn.Linear(dim, dim) for _ in range(depth))
        self.glob = nn.ModuleList(nn.Linear(dim, dim) for _ in range(depth))

    def forward(self, features: list[torch.Tensor]):
        x = torch.stack([f.permute(0, 2, 3, 1) for f in features], 1)  # [B, V, h, w, C]
        inter = []
        for fb, gb in zip(self.frame, self.glob):
            x = x + torch.tanh(fb(x))
            x = x + torch.tanh(gb(x.mean(dim=(1, 2, 3), keepdim=True)))  # what every view shares
            inter.append(SimpleNamespace(features=list(x.permute(0, 1, 4, 2, 3).unbind(1))))
        return inter[-1], inter[:-1]


class StandInMapAnything(nn.Module):
    def __init__(self, dim: int = 16, depth: int = 2, seed: int = 0, nan_below_brightness: float | None = None):
        super().__init__()
        self.encoder = nn.Conv2d(3, dim, 14, 14)
        self.encoder.data_norm_type = "dinov2"
        self.encoder.patch_size = 14
        self.info_sharing = _InfoSharing(dim, depth)
        self.depth_head = nn.Linear(dim, 2)  # log depth, confidence logit
        self.pose_head = nn.Linear(dim, 7)  # axis-angle (3), translation (3), log fov scale (1)
        self.nan_below_brightness = nan_below_brightness
        self.calls: list[dict] = []
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(max(1, math.prod(p.shape[1:]))))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> StandInMapAnything:
        path = Path(pretrained_model_name_or_path)
        if not path.is_dir():
            raise ValueError(f"Repo id must be in the form 'repo_name' or 'namespace/repo_name': {str(path)!r}")
        cfg = json.loads((path / CONFIG_FILE).read_text())
        cfg.pop("architecture", None)
        return cls(**cfg)

    def infer(self, views, memory_efficient_inference=True, minibatch_size=None, use_amp=True, amp_dtype="bf16", apply_mask=True, mask_edges=True):
        if amp_dtype not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"amp_dtype must be bf16, fp16 or fp32, got {amp_dtype!r}")
        for v in views:
            if v.get("data_norm_type") != [self.encoder.data_norm_type]:
                raise ValueError("data_norm_type must equal the encoder's")
        imgs = [v["img"].float() for v in views]
        b, _, h, w = imgs[0].shape
        self.calls.append({"views": len(views), "batch": b, "use_amp": use_amp, "amp_dtype": amp_dtype, "apply_mask": apply_mask,
                           "mask_edges": mask_edges, "memory_efficient_inference": memory_efficient_inference, "minibatch_size": minibatch_size})
        final, _ = self.info_sharing([self.encoder(x) for x in imgs])
        out = []
        for v, (x, f) in enumerate(zip(imgs, final.features)):
            tok = f.permute(0, 2, 3, 1)  # [B, h, w, C]
            d = F.interpolate(self.depth_head(tok).permute(0, 3, 1, 2), size=(h, w), mode="bilinear", align_corners=False)
            depth = torch.exp(0.5 * torch.tanh(d[:, 0])) + 1.0  # [B, H, W] in (1.6, 2.7)
            conf = 1 + torch.exp(d[:, 1])
            pose = self.pose_head(tok.mean(dim=(1, 2)))  # [B, 7]
            focal = (w / 2) / math.tan(math.radians(45)) * torch.exp(0.1 * torch.tanh(pose[:, 6]))
            k = torch.zeros(b, 3, 3)
            k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2], k[:, 2, 2] = focal, focal, w / 2, h / 2, 1.0
            c2w = torch.eye(4).repeat(b, 1, 1)
            if v > 0:
                ax = 0.3 * torch.tanh(pose[:, :3])
                skew = torch.zeros(b, 3, 3)
                skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = -ax[:, 2], ax[:, 1], -ax[:, 0]
                c2w[:, :3, :3] = torch.linalg.matrix_exp(skew - skew.transpose(1, 2))
                c2w[:, :3, 3] = 0.5 * torch.tanh(pose[:, 3:6])
            vv, uu = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
            cam = torch.stack([(uu - k[:, 0, 2, None, None]) / k[:, 0, 0, None, None] * depth,
                               (vv - k[:, 1, 2, None, None]) / k[:, 1, 1, None, None] * depth, depth], -1)
            pts = torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], cam) + c2w[:, None, None, :3, 3]
            mask = conf > 1.05
            raw = x * torch.tensor(_STD).view(1, 3, 1, 1) + torch.tensor(_MEAN).view(1, 3, 1, 1)
            if self.nan_below_brightness is not None:
                dark = raw.mean(dim=(1, 2, 3)) < self.nan_below_brightness
                depth[dark], pts[dark] = float("nan"), float("nan")
            if apply_mask:
                depth, pts, cam = depth * mask, pts * mask[..., None], cam * mask[..., None]
            out.append({"pts3d": pts, "pts3d_cam": cam, "depth_z": depth[..., None], "intrinsics": k, "camera_poses": c2w,
                        "conf": conf, "mask": mask[..., None], "metric_scaling_factor": torch.ones(b)})
        return out


def make_standin(out_dir, seed: int = 0, dim: int = 16, *, depth: int = 2, nan_below_brightness: float | None = None) -> Path:
    """Write a stand-in "checkpoint" folder (config + random-init provenance); returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {"architecture": "StandInMapAnything", "dim": dim, "depth": depth, "seed": seed, "nan_below_brightness": nan_below_brightness}
    (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=1))
    (out / PROVENANCE_FILE).write_text(json.dumps(
        {"random_init": True, "seed": seed, "note": "tiny seeded random-initialised MapAnything stand-in for tests; NOT MapAnything weights"}, indent=1))
    return out
