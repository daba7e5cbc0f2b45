"""LLaVA-3D's "3D patches" (ZCMax/LLaVA-3D) before its trainable parts: CLIP patch features and
the world xyz of every patch.

Read from LLaVA-3D's source (nothing copied):

- ``llava/model/multimodal_encoder/clip_encoder.py``: the vision tower is CLIP ViT-L/14-336;
  features are ``hidden_states[mm_vision_select_layer]`` (-2) with the CLS token dropped
  ("patch"): [24*24, 1024] per view. Here: transformers' ``CLIPVisionModel`` from an id or a
  local folder, fed by the checkpoint's own ``CLIPImageProcessor`` (``hf_preprocessing``).
- ``video_processor.py`` (``preprocess_depth_image``, ``preprocess_instrinsic``): the depth image
  is resized with PIL NEAREST so that its short side is the processor's crop size S (the long
  side ``int(long * S / short)``), centre-cropped to S x S, and the intrinsics are scaled by the
  same factors and shifted by the crop. (Upstream shifts only cx by ``(new_w - new_h) / 2``,
  which is the crop offset for landscape and square images; here both cx and cy are shifted by
  the offsets PIL's crop actually applies, which is the same for landscape and square images
  and also right for portrait ones.)
- ``unproject.py``: pixels at integer coordinates (x, y) (no half-pixel offset),
  ``X = (x - cx) z / fx``, ``Y = (y - cy) z / fy``, world = ``pose @ [X, Y, z, 1]`` with ``pose``
  the 4x4 camera-to-world matrix; then ``F.interpolate(mode="nearest")`` of the S x S xyz map to
  the P x P patch grid, i.e. patch (i, j) takes crop pixel (floor(i * S / P), floor(j * S / P)).

The learned 3-D position embedding (MLP 3 -> 1024) and the 0.2 m voxel pooling
(``scatter_mean``) are trainable/head-side and not done here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import NavcacheError
from .base import FrozenEncoder, check_device, check_precision
from .hf_preprocessing import UnsupportedPreprocessing, build_preprocessor
from .weights import model_metadata

XYZ_FROM = ("mapanything", "gt")


@dataclass(frozen=True)
class Llava3DSettings:
    #: hub id or local folder of a CLIP checkpoint (full CLIP or vision-only), ``CLIPVisionModel.from_pretrained``
    model: str = "openai/clip-vit-large-patch14-336"
    revision: str | None = None
    device: str = "auto"
    precision: str = "auto"
    #: hidden state kept (LLaVA-3D: -2, the second to last layer)
    select_layer: int = -2
    #: where depth + pose come from: "mapanything" (the spatial stage's MapAnything cache of the
    #: same dataset, which the spatial-llava3d stage consumes) or "gt" (the source's ground truth,
    #: e.g. the videos source's .gt.npz)
    xyz_from: Literal["mapanything", "gt"] = "mapanything"

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model must be a non-empty hub id or folder, got {self.model!r}")
        check_device(self.device)
        check_precision(self.precision)
        if isinstance(self.select_layer, bool) or not isinstance(self.select_layer, int):
            raise ValueError(f"select_layer must be an integer (hidden-state index), got {self.select_layer!r}")
        if self.xyz_from not in XYZ_FROM:
            raise ValueError(f"xyz_from must be one of {', '.join(XYZ_FROM)}, got {self.xyz_from!r}")


class ClipPatchEncoder(FrozenEncoder):
    """CLIP vision tower -> per-view patch grids [N, P, P, D] of hidden state ``select_layer``."""

    def facts(self) -> dict:
        """Config class, hidden/patch/image size and processor options, memoised per weights version."""
        return model_metadata(self.s.model, self.s.revision, self._read_facts, {"reader": "clip-vision"})

    def _read_facts(self) -> dict:
        from transformers import CLIPVisionConfig
        from transformers.image_processing_utils import ImageProcessingMixin

        cfg = CLIPVisionConfig.from_pretrained(self.s.model, revision=self.s.revision)
        try:
            proc, _ = ImageProcessingMixin.get_image_processor_dict(self.s.model, revision=self.s.revision)
        except OSError as e:
            raise NavcacheError(f"CLIP {self.s.model!r}: cannot read its preprocessor_config.json: {e}") from None
        return {"class": type(cfg).__name__, "hidden_size": int(cfg.hidden_size), "patch_size": int(cfg.patch_size),
                "image_size": int(cfg.image_size), "num_hidden_layers": int(cfg.num_hidden_layers), "processor": proc}

    def crop_size(self) -> int:
        """S: the square the processor centre-crops to (LLaVA-3D's depth target)."""
        proc = self.facts()["processor"]
        crop = proc.get("crop_size") or {}
        s = crop.get("height") if isinstance(crop, dict) else crop
        if not s or (isinstance(crop, dict) and crop.get("width", s) != s):
            raise NavcacheError(f"CLIP {self.s.model!r}: processor crop_size {crop!r} is not a square; LLaVA-3D's depth rule needs one")
        return int(s)

    def grid(self) -> int:
        """P: patches per side of the crop."""
        return self.crop_size() // int(self.facts()["patch_size"])

    def hidden_size(self) -> int:
        return int(self.facts()["hidden_size"])

    def architecture(self) -> str:
        return self.facts()["class"]

    def output_identity(self) -> dict:
        proc = {k: v for k, v in self.facts()["processor"].items() if k not in ("processor_class", "image_processor_type")}
        return {"class": self.architecture(), "processor": proc, "select_layer": self.s.select_layer, "drop_cls": True}

    def check(self, field: str, seen: dict | None = None) -> str:
        where = super().check(field, seen)
        try:
            build_preprocessor(self.facts()["processor"], self.s.model)
        except UnsupportedPreprocessing as e:
            raise UnsupportedPreprocessing(f"{field}: {e}") from None
        n = int(self.facts()["num_hidden_layers"])
        if not -(n + 1) <= self.s.select_layer <= n:
            raise NavcacheError(f"{field.rsplit('.', 1)[0]}.select_layer: {self.s.select_layer} is outside the {n + 1} hidden states")
        return where

    def _load_model(self):
        import transformers
        from transformers import CLIPVisionModel

        transformers.utils.logging.disable_progress_bar()
        # use_safetensors=None: safetensors when present, else a .bin through torch.load(weights_only=True)
        return CLIPVisionModel.from_pretrained(self.s.model, revision=self.s.revision, use_safetensors=None)

    def _on_loaded(self, model) -> None:
        self._preprocess = build_preprocessor(self.facts()["processor"], self.s.model)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] RGB -> float32 [N, P, P, D]: hidden state ``select_layer``, CLS dropped."""
        import torch

        model = self.load()
        x = self._preprocess(pixels).to(self.resolved_device())
        with torch.inference_mode(), self.autocast():
            h = model(pixel_values=x, output_hidden_states=True).hidden_states[self.s.select_layer]
        p = x.shape[-1] // int(model.config.patch_size)
        if h.shape[1] != 1 + p * p:
            raise NavcacheError(f"CLIP returned {h.shape[1]} tokens, expected 1 + {p}x{p}")
        return h[:, 1:].float().reshape(len(x), p, p, -1).cpu().numpy()


def llava3d_depth_view(depth: np.ndarray, intrinsics: np.ndarray, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """LLaVA-3D's depth preprocessing: depth [H, W] -> (depth [crop, crop] float32, intrinsics [3, 3]
    float64 for it). PIL NEAREST resize of the short side to ``crop`` (long side ``int(long * crop /
    short)``), centre crop with PIL's rounding of the box; intrinsics scaled per axis, shifted by the crop."""
    from PIL import Image

    d = np.asarray(depth, np.float32)
    if d.ndim != 2 or min(d.shape) < 1:
        raise ValueError(f"depth must be [H, W], got shape {d.shape}")
    h, w = d.shape
    if w < h:
        new_w, new_h = crop, int(h * (crop / w))
    else:
        new_w, new_h = int(w * (crop / h)), crop
    img = Image.fromarray(np.nan_to_num(d, nan=0.0, posinf=0.0, neginf=0.0), mode="F").resize((new_w, new_h), Image.Resampling.NEAREST)
    left, top = (new_w - crop) / 2, (new_h - crop) / 2
    x0, y0 = int(round(left)), int(round(top))  # what Image.crop does with the float box
    out = np.asarray(img.crop((left, top, left + crop, top + crop)), np.float32)
    k = np.array(intrinsics, np.float64)
    k[0] *= new_w / w
    k[1] *= new_h / h
    k[0, 2] -= x0
    k[1, 2] -= y0
    return out, k


def patch_xyz(depth: np.ndarray, intrinsics: np.ndarray, cam2world: np.ndarray, crop: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """World xyz of each CLIP patch by LLaVA-3D's rule (module docstring).

    depth [H, W] z-depth (<= 0 or non-finite: none), intrinsics [3, 3] for that map, cam2world
    [4, 4] -> (xyz float32 [grid, grid, 3], valid bool [grid, grid]); xyz is 0 where not valid.
    """
    d, k = llava3d_depth_view(depth, intrinsics, crop)
    idx = np.minimum(np.floor(np.arange(grid) * (crop / grid)).astype(np.int64), crop - 1)  # torch "nearest"
    z = d[np.ix_(idx, idx)].astype(np.float64)
    v, u = np.meshgrid(idx.astype(np.float64), idx.astype(np.float64), indexing="ij")
    cam = np.stack([(u - k[0, 2]) * z / k[0, 0], (v - k[1, 2]) * z / k[1, 1], z, np.ones_like(z)], -1)
    world = cam @ np.asarray(cam2world, np.float64).T
    xyz = world[..., :3] / world[..., 3:]
    valid = np.isfinite(z) & (z > 0) & np.isfinite(xyz).all(-1)
    return np.where(valid[..., None], xyz, 0.0).astype(np.float32), valid
