"""A tiny seeded random-init stand-in for VGGT (facebookresearch/vggt): no download, no ``vggt`` package.

Shipped with navcache because the embedded demo needs a VGGT with aggregator tokens
(``demo_heatmaps_vggt``, for the heatmaps head) and the real ``vggt`` is not on PyPI. Its weights
are random (``make_standin`` records ``random_init: true`` in the provenance file): its outputs
mean nothing about the scene, only the interface is VGGT's. The tests use it too
(``tests/standins/vggt_standin.py`` re-exports it).

It honours the parts of VGGT's contract that ``pipeline.encoders.vggt.VGGTAdapter`` relies on:

- attributes ``aggregator`` (with ``patch_size`` and ``patch_start_idx`` = 1 + 4 registers),
  ``camera_head``, ``depth_head``, ``point_head``, ``track_head`` (None);
- ``aggregator(images [B, S, 3, H, W])`` -> (list of ``depth`` token tensors [B, S, 5 + P, 2C],
  5); frame-local mixing, then a mixing across all S frames, so frames influence each other;
- ``camera_head(tokens_list)`` -> list of 4 pose encodings [B, S, 9] (T, quaternion XYZW,
  fov_h, fov_w); only the last is the prediction, the earlier ones are deliberately off;
- ``depth_head`` / ``point_head`` (tokens_list, images=[B, S, 3, H, W], patch_start_idx=5) ->
  (depth [B, S, H, W, 1] or points [B, S, H, W, 3], conf [B, S, H, W]), fp32, conf >= 1;
- ``StandInVGGT.from_pretrained(folder)`` reading ``config.json`` written by ``make_standin``.

Test hooks: ``fixed_pose_enc`` (9-vectors, applied to frames cyclically) makes the camera head
return known values; ``oom_above_frames`` makes the aggregator raise ``torch.OutOfMemoryError``
when S exceeds it; every submodule records its calls (frames, autocast state, input dtype).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..encoders.weights import PROVENANCE_FILE

CONFIG_FILE = "config.json"
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


class StandInAggregator(nn.Module):
    def __init__(self, embed_dim: int, depth: int, patch_size: int, num_register_tokens: int = 4, oom_above_frames: int | None = None):
        super().__init__()
        self.patch_size = patch_size
        self.depth = depth
        self.patch_start_idx = 1 + num_register_tokens
        self.oom_above_frames = oom_above_frames
        self.patch_embed = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        # as VGGT: one camera/register token set for the first frame, another for the rest
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, embed_dim))
        self.register_token = nn.Parameter(torch.zeros(1, 2, num_register_tokens, embed_dim))
        self.frame_blocks = nn.ModuleList(nn.Linear(embed_dim, embed_dim) for _ in range(depth))
        self.global_blocks = nn.ModuleList(nn.Linear(embed_dim, embed_dim) for _ in range(depth))
        self.register_buffer("_mean", torch.tensor(_MEAN).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(_STD).view(1, 1, 3, 1, 1), persistent=False)
        #: one entry per call: {"S", "autocast", "autocast_dtype"}
        self.calls: list[dict] = []

    def forward(self, images: torch.Tensor):
        b, s, c, h, w = images.shape  # VGGT's aggregator takes [B, S, 3, H, W] only
        if c != 3:
            raise ValueError(f"Expected 3 input channels, got {c}")
        on, dt = _autocast_state(images.device.type)
        self.calls.append({"S": s, "autocast": on, "autocast_dtype": dt})
        if self.oom_above_frames is not None and s > self.oom_above_frames:
            raise torch.OutOfMemoryError(f"stand-in: {s} frames exceed the simulated memory of {self.oom_above_frames}")
        x = ((images - self._mean) / self._std).reshape(b * s, c, h, w)
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B*S, P, C]
        first = torch.ones(s, dtype=torch.bool, device=images.device)
        first[1:] = False
        which = torch.where(first, 0, 1).repeat(b)  # token set per frame, [B*S]
        cam = self.camera_token[0, which]  # [B*S, 1, C]
        reg = self.register_token[0, which]  # [B*S, R, C]
        tokens = torch.cat([cam, reg, patches.to(cam.dtype)], dim=1)
        n, p, e = tokens.shape
        out = []
        for fb, gb in zip(self.frame_blocks, self.global_blocks):
            tokens = tokens + torch.tanh(fb(tokens))
            frame_inter = tokens.reshape(b, s, p, e)
            across = frame_inter.mean(dim=1, keepdim=True)  # what global attention would share
            tokens = (frame_inter + torch.tanh(gb(across))).reshape(n, p, e)
            out.append(torch.cat([frame_inter, tokens.reshape(b, s, p, e)], dim=-1))
        return out, self.patch_start_idx


class StandInCameraHead(nn.Module):
    def __init__(self, dim_in: int, fixed_pose_enc: list[list[float]] | None = None):
        super().__init__()
        self.norm = nn.LayerNorm(dim_in)
        self.proj = nn.Linear(dim_in, 9)
        self.register_buffer("fixed", torch.tensor(fixed_pose_enc, dtype=torch.float32) if fixed_pose_enc else None, persistent=False)
        self.calls: list[dict] = []

    def forward(self, aggregated_tokens_list: list, num_iterations: int = 4) -> list:
        tokens = aggregated_tokens_list[-1]
        pose_tokens = tokens[:, :, 0]  # the camera token of every frame, [B, S, 2C]
        on, _ = _autocast_state(tokens.device.type)
        self.calls.append({"autocast": on, "dtype": tokens.dtype})
        enc = self.proj(self.norm(pose_tokens))
        # fov through softplus: positive, like VGGT's relu activation, but never exactly 0
        pose = torch.cat([enc[..., :7], F.softplus(enc[..., 7:]) + 0.3], dim=-1)
        if self.fixed is not None:
            b, s = pose.shape[:2]
            idx = torch.arange(s, device=pose.device) % self.fixed.shape[0]
            pose = self.fixed[idx].expand(b, s, 9).to(pose.dtype)
        # earlier refinement iterations are visibly off, so using any but the last one shows
        return [pose + float(num_iterations - 1 - i) for i in range(num_iterations)]


class StandInDPTHead(nn.Module):
    def __init__(self, dim_in: int, output_dim: int, activation: str, patch_size: int, layer_idx: int):
        super().__init__()
        self.patch_size = patch_size
        self.activation = activation
        self.layer_idx = layer_idx
        self.output_dim = output_dim
        self.norm = nn.LayerNorm(dim_in)
        self.proj = nn.Linear(dim_in, output_dim)
        self.calls: list[dict] = []

    def forward(self, aggregated_tokens_list: list, images: torch.Tensor, patch_start_idx: int, frames_chunk_size: int = 8):
        b, s, _, h, w = images.shape  # [B, S, 3, H, W], as VGGT's DPTHead
        hp, wp = h // self.patch_size, w // self.patch_size
        x = aggregated_tokens_list[self.layer_idx][:, :, patch_start_idx:]
        on, _ = _autocast_state(x.device.type)
        self.calls.append({"autocast": on, "dtype": x.dtype, "patch_start_idx": patch_start_idx})
        x = self.proj(self.norm(x)).reshape(b * s, hp, wp, self.output_dim).permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)
        fmap = x.permute(0, 2, 3, 1)
        pred, conf = fmap[..., :-1], fmap[..., -1]
        if self.activation == "exp":
            pred = torch.exp(pred)
        else:  # "inv_log"
            pred = torch.sign(pred) * torch.expm1(pred.abs())
        conf = 1 + conf.exp()
        return pred.reshape(b, s, h, w, self.output_dim - 1), conf.reshape(b, s, h, w)


class StandInVGGT(nn.Module):
    def __init__(self, embed_dim: int = 16, depth: int = 4, patch_size: int = 14, seed: int = 0, fixed_pose_enc=None, oom_above_frames=None):
        super().__init__()
        self.aggregator = StandInAggregator(embed_dim, depth, patch_size, oom_above_frames=oom_above_frames)
        self.camera_head = StandInCameraHead(2 * embed_dim, fixed_pose_enc)
        self.depth_head = StandInDPTHead(2 * embed_dim, 2, "exp", patch_size, layer_idx=depth // 2)
        self.point_head = StandInDPTHead(2 * embed_dim, 4, "inv_log", patch_size, layer_idx=-1)
        self.track_head = None
        self._init_weights(seed)

    @torch.no_grad()
    def _init_weights(self, seed: int) -> None:
        # a private generator: deterministic per seed, and the global RNG of the test is untouched
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim >= 2:
                fan_in = math.prod(p.shape[1:])
                p.copy_(noise / math.sqrt(fan_in))
            elif name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> StandInVGGT:
        path = Path(pretrained_model_name_or_path)
        if not path.is_dir():
            # what PyTorchModelHubMixin does with a missing folder: it is read as a hub repo id
            raise ValueError(f"Repo id must be in the form 'repo_name' or 'namespace/repo_name': {str(path)!r}")
        cfg_file = path / CONFIG_FILE
        if not cfg_file.is_file():
            raise OSError(f"stand-in VGGT: no {CONFIG_FILE} in {str(path)!r} (make it with make_standin)")
        cfg = json.loads(cfg_file.read_text())
        cfg.pop("architecture", None)
        return cls(**cfg)

    def forward(self, images: torch.Tensor) -> dict:
        """Same call and outputs as ``VGGT.forward`` (no tracking)."""
        if images.ndim == 4:
            images = images[None]
        tokens_list, psi = self.aggregator(images)
        with torch.autocast(device_type=images.device.type, enabled=False):
            pose_enc_list = self.camera_head(tokens_list)
            depth, depth_conf = self.depth_head(tokens_list, images=images, patch_start_idx=psi)
            pts, pts_conf = self.point_head(tokens_list, images=images, patch_start_idx=psi)
        return {
            "pose_enc": pose_enc_list[-1],
            "pose_enc_list": pose_enc_list,
            "depth": depth,
            "depth_conf": depth_conf,
            "world_points": pts,
            "world_points_conf": pts_conf,
        }


def make_standin(
    out_dir,
    seed: int = 0,
    embed_dim: int = 16,
    *,
    depth: int = 4,
    fixed_pose_enc: list[list[float]] | None = None,
    oom_above_frames: int | None = None,
) -> Path:
    """Write a stand-in "checkpoint" folder (config + random-init provenance); returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if fixed_pose_enc is not None:
        fixed_pose_enc = [[float(v) for v in row] for row in fixed_pose_enc]
        if not fixed_pose_enc or any(len(row) != 9 for row in fixed_pose_enc):
            raise ValueError("fixed_pose_enc must be a non-empty list of 9-vectors")
    cfg = {
        "architecture": "StandInVGGT",
        "embed_dim": embed_dim,
        "depth": depth,
        "patch_size": 14,
        "seed": seed,
        "fixed_pose_enc": fixed_pose_enc,
        "oom_above_frames": oom_above_frames,
    }
    (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=1))
    (out / PROVENANCE_FILE).write_text(
        json.dumps({"random_init": True, "seed": seed, "note": "tiny seeded random-initialised VGGT stand-in (navcache demo and tests); NOT VGGT weights"}, indent=1)
    )
    return out
