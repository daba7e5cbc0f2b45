"""MapAnything (facebookresearch/map-anything) as a frozen multi-view metric 3-D reconstructor.

MapAnything is not on PyPI: ``pip install git+https://github.com/facebookresearch/map-anything``
(it pulls ``uniception``; its DINOv2 encoder comes through ``torch.hub``). Nothing here imports it
at module level, so planning and ``status`` work without it; ``MapAnythingAdapter.load()``
imports ``model_class`` and ``preprocess`` ("module:name") lazily, which also lets tests point the
adapter at a stand-in honouring the same contract (``tests/standins/mapanything_standin.py``).

Contract used (read from ``mapanything/models/mapanything/model.py`` and ``mapanything/utils/image.py``):

- ``MapAnything.from_pretrained(id or folder)`` (huggingface_hub ``PyTorchModelHubMixin``:
  safetensors, config.json = the constructor's arguments); ``model.encoder.data_norm_type``
  names the image normalisation ("dinov2").
- ``preprocess_inputs(views, resize_mode="fixed_mapping", norm_type=..., patch_size=14,
  resolution_set=518)``: views ``[{"img": uint8 [H, W, 3]}]`` -> ``[{"img": float [1, 3, H', W'],
  "data_norm_type": [norm], ...}]``; (W', H') is the 518-px bucket (518x518, 518x392, 518x336,
  518x294, 518x252, 518x168 and portrait) closest to the views' mean aspect ratio; each view is
  resized and centre-cropped to it (``crop_resize_if_necessary``). This is the package's own
  image loading for in-memory frames (``load_images`` does the same for files).
- ``model.infer(views, memory_efficient_inference, minibatch_size, use_amp, amp_dtype,
  apply_mask, mask_edges)`` -> one dict per view with ``pts3d`` [B, H, W, 3] (world = view 0's
  camera), ``depth_z`` [B, H, W, 1], ``intrinsics`` [B, 3, 3], ``camera_poses`` [B, 4, 4] (OpenCV
  cam2world), ``conf`` [B, H, W], ``mask`` [B, H, W, 1], ``metric_scaling_factor`` [B]; B indexes
  independent scenes (here: timesteps), the list indexes the views related by the transformer.
- ``model.info_sharing`` (the multi-view transformer) returns a ``MultiViewTransformerOutput``
  (or ``(final, intermediates)``) whose ``features`` are per view [B, C, H/14, W/14]: ``infer``
  does not return them, so a forward hook on that module reads them during the same pass.
"""
from __future__ import annotations

import importlib
import importlib.util
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import ConfigError, NavcacheError
from .base import FrozenEncoder, check_device, check_precision

INSTALL_HINT = "pip install git+https://github.com/facebookresearch/map-anything"
RESOLUTION_SETS = (518, 512, 504)
_NAME_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_]\w*$")

#: "module:name" values imported without ``allow_custom_code`` ("module:*" = any name of it):
#: MapAnything itself and navcache's test stand-in. Importing a module runs its code.
ALLOWED: tuple[str, ...] = (
    "mapanything.models:MapAnything",
    "mapanything.utils.image:preprocess_inputs",
    "navcache.tests.standins.mapanything_standin:*",
    "tests.standins.mapanything_standin:*",
)


def allowed(name: str) -> bool:
    return name in ALLOWED or f"{name.partition(':')[0]}:*" in ALLOWED


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name.partition(":")[0].split(".")[0]) is not None


@dataclass(frozen=True)
class MapAnythingSettings:
    #: hub id or local folder, passed to ``Class.from_pretrained``
    model: str = "facebook/map-anything"
    #: "package.module:Class" of the model; tests point it at a stand-in
    model_class: str = "mapanything.models:MapAnything"
    #: "package.module:function" of the package's image preprocessing
    preprocess: str = "mapanything.utils.image:preprocess_inputs"
    #: import a ``model_class`` / ``preprocess`` outside ``ALLOWED`` (it runs that module's code)
    allow_custom_code: bool = False
    #: "auto" = bf16 on CUDA capability >= 8, fp16 on older CUDA, fp32 (use_amp=False) on CPU
    precision: str = "auto"
    device: str = "auto"
    #: MapAnything's 518/512/504-px aspect buckets (``resolution_set`` of its loader)
    resolution_set: int = 518
    #: ``infer``'s options (values, not only speed: apply_mask/mask_edges zero masked outputs)
    memory_efficient_inference: bool = True
    minibatch_size: int | None = None
    apply_mask: bool = True
    mask_edges: bool = True
    #: also keep the multi-view transformer's final per-view features, pooled
    keep_features: bool = False
    #: average-pool the feature grid to feature_grid x feature_grid
    feature_grid: int = 8

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model must be a non-empty hub id or folder, got {self.model!r}")
        for field in ("model_class", "preprocess"):
            value = getattr(self, field)
            if not isinstance(value, str) or not _NAME_RE.match(value):
                raise ValueError(f"{field} must look like 'package.module:name', got {value!r}")
            if not self.allow_custom_code and not allowed(value) and _installed(value):
                raise ValueError(f"{field} {value!r} is not allowed (allowed: {', '.join(ALLOWED)}); importing it would run "
                                 "its code: set allow_custom_code: true beside it if you trust it")
        check_precision(self.precision)
        check_device(self.device)
        if self.resolution_set not in RESOLUTION_SETS:
            raise ValueError(f"resolution_set must be one of {', '.join(map(str, RESOLUTION_SETS))}, got {self.resolution_set!r}")
        if self.minibatch_size is not None and (isinstance(self.minibatch_size, bool) or self.minibatch_size < 1):
            raise ValueError(f"minibatch_size must be an integer >= 1 or null, got {self.minibatch_size!r}")
        for field in ("allow_custom_code", "memory_efficient_inference", "apply_mask", "mask_edges", "keep_features"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"{field} must be true or false, got {getattr(self, field)!r}")
        if isinstance(self.feature_grid, bool) or not isinstance(self.feature_grid, int) or self.feature_grid < 1:
            raise ValueError(f"feature_grid must be an integer >= 1, got {self.feature_grid!r}")


class MapAnythingAdapter(FrozenEncoder):
    """Loads lazily (``load()``); see the module docstring for the contract."""

    def architecture(self) -> str:
        return self.s.model_class

    def output_identity(self) -> dict:
        s = self.s
        ident = {"class": s.model_class, "preprocess": {"fn": s.preprocess, "resize_mode": "fixed_mapping",
                                                         "resolution_set": s.resolution_set, "patch_size": 14},
                 "infer": {"memory_efficient_inference": s.memory_efficient_inference, "apply_mask": s.apply_mask,
                           "mask_edges": s.mask_edges}, "keep_features": s.keep_features}
        if s.keep_features:
            ident["feature_grid"] = s.feature_grid
        return ident

    def check(self, field: str, seen: dict | None = None) -> str:
        """Both names importable (errors name ``<prefix>.model_class`` / ``.preprocess``), then the
        weights as ``FrozenEncoder.check``. Imports the package; never loads weights."""
        prefix = field.rsplit(".", 1)[0]
        self._import(self.s.model_class, prefix + ".model_class")
        self._import(self.s.preprocess, prefix + ".preprocess")
        return super().check(field, seen)

    def _import(self, name: str, field: str):
        module_name, _, attr = name.partition(":")
        if not self.s.allow_custom_code and not allowed(name) and _installed(name):
            raise ConfigError(f"{field}: {name!r} is not allowed (allowed: {', '.join(ALLOWED)}); "
                              "set allow_custom_code: true beside it if you trust its code")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise NavcacheError(f"{field}: {name!r} cannot be imported ({e}); MapAnything is not on PyPI, install it with: "
                                f"{INSTALL_HINT}") from None
        try:
            return getattr(module, attr)
        except AttributeError:
            raise NavcacheError(f"{field}: module {module_name!r} has no {attr!r}") from None

    def _load_model(self):
        cls = self._import(self.s.model_class, "mapanything.model_class")
        try:
            return cls.from_pretrained(self.s.model)
        except (OSError, ValueError) as e:
            raise NavcacheError(f"MapAnything weights {self.s.model!r} cannot be loaded: {e}") from None

    def _on_loaded(self, model) -> None:
        self._preprocess = self._import(self.s.preprocess, "mapanything.preprocess")
        self._norm = str(getattr(getattr(model, "encoder", None), "data_norm_type", "dinov2"))

    # -- heavy path ---------------------------------------------------------------------------
    def preprocess(self, views: Sequence[np.ndarray]) -> list[dict]:
        """Per view uint8 [B, H, W, 3] (B timesteps, same B for every view) -> the package's input
        views ``{"img": [B, 3, H', W'], "data_norm_type": [norm]}``, one per view. Each timestep is
        preprocessed as its own scene (its bucket from its own views), then stacked."""
        import torch

        self.load()
        b = {len(v) for v in views}
        if len(b) != 1 or 0 in b:
            raise ValueError(f"every view needs the same number (>= 1) of frames, got {[len(v) for v in views]}")
        per_t = [self._preprocess([{"img": np.ascontiguousarray(v[t])} for v in views], resize_mode="fixed_mapping",
                                  norm_type=self._norm, patch_size=14, resolution_set=self.s.resolution_set)
                 for t in range(b.pop())]
        shapes = {tuple(p[0]["img"].shape[-2:]) for p in per_t}
        if len(shapes) != 1:
            raise ValueError(f"timesteps preprocess to different sizes {sorted(shapes)} (HxW)")
        return [{"img": torch.cat([p[v]["img"] for p in per_t]).float(), "data_norm_type": [self._norm]} for v in range(len(views))]

    def _amp(self) -> tuple[bool, str]:
        p = self.resolved_precision()
        return (p != "fp32"), {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}[p]

    def infer(self, views: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Per view uint8 [B, H, W, 3] -> numpy arrays with a view axis after the batch axis:
        ``pts3d`` [B, V, H', W', 3], ``depth_z`` [B, V, H', W'], ``conf`` [B, V, H', W'], ``mask``
        bool [B, V, H', W'], ``intrinsics`` [B, V, 3, 3], ``camera_poses`` [B, V, 4, 4],
        ``metric_scaling_factor`` [B], and with ``keep_features`` ``features`` [B, V, G, G, C].
        float32 except ``mask``; the V views of each timestep form one reconstruction."""
        import torch

        model = self.load()
        inputs = self.preprocess(views)
        captured: list = []
        hook = model.info_sharing.register_forward_hook(lambda _m, _i, out: captured.append(out)) if self.s.keep_features else None
        use_amp, amp_dtype = self._amp()
        try:
            with torch.inference_mode():
                preds = model.infer(inputs, memory_efficient_inference=self.s.memory_efficient_inference,
                                    minibatch_size=self.s.minibatch_size, use_amp=use_amp, amp_dtype=amp_dtype,
                                    apply_mask=self.s.apply_mask, mask_edges=self.s.mask_edges)
        finally:
            if hook is not None:
                hook.remove()
        out = _stack(preds, len(views), inputs[0]["img"].shape)
        if self.s.keep_features:
            out["features"] = self._pooled(captured, len(views))
        return out

    def _pooled(self, captured: list, n_views: int) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        if len(captured) != 1:
            raise NavcacheError(f"MapAnything's info_sharing ran {len(captured)} times in one infer call, expected once")
        final = captured[0][0] if isinstance(captured[0], tuple) else captured[0]
        feats = list(final.features)
        if len(feats) != n_views:
            raise NavcacheError(f"MapAnything returned features for {len(feats)} views, expected {n_views}")
        g = self.s.feature_grid
        pooled = [F.adaptive_avg_pool2d(f.float(), (g, g)).permute(0, 2, 3, 1) for f in feats]  # [B, G, G, C] each
        return torch.stack(pooled, 1).cpu().numpy()


def _stack(preds: list[dict], n_views: int, img_shape) -> dict[str, np.ndarray]:
    """``infer``'s list of per-view dicts -> arrays [B, V, ...] (shapes checked, named when wrong)."""
    if len(preds) != n_views:
        raise NavcacheError(f"MapAnything returned {len(preds)} views, expected {n_views}")
    b, _, h, w = img_shape
    want = {"pts3d": (b, h, w, 3), "depth_z": (b, h, w, 1), "conf": (b, h, w), "mask": (b, h, w, 1),
            "intrinsics": (b, 3, 3), "camera_poses": (b, 4, 4)}
    out = {}
    for key, shape in want.items():
        per_view = []
        for v, p in enumerate(preds):
            if key not in p:
                raise NavcacheError(f"MapAnything's output for view {v} has no {key!r} (has: {', '.join(sorted(p))})")
            t = p[key]
            if tuple(t.shape) != shape:
                raise NavcacheError(f"MapAnything {key} of view {v} has shape {tuple(t.shape)}, expected {shape}")
            per_view.append(t.detach().float().cpu().numpy())
        out[key] = np.stack(per_view, 1)
    out["depth_z"] = out["depth_z"][..., 0]
    out["mask"] = out.pop("mask")[..., 0] > 0.5
    scale = preds[0].get("metric_scaling_factor")
    out["metric_scaling_factor"] = (np.ones(b, np.float32) if scale is None else
                                    scale.detach().float().cpu().numpy().reshape(b))
    return out
