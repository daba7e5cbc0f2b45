"""VGGT (facebookresearch/vggt) as a frozen multi-view geometry encoder.

VGGT is not on PyPI: ``pip install git+https://github.com/facebookresearch/vggt``. Nothing here
imports it at module level, so planning, ``status`` and the pure conversions below work without
it; ``VGGTAdapter.load()`` imports ``VGGTSettings.model_class`` ("module:Class") lazily, which
also lets tests point the adapter at a stand-in honouring the same contract.

Contract of the model object (read from ``vggt/models/vggt.py`` and its heads):

- ``model.aggregator(images [B, S, 3, H, W] in [0, 1])`` -> ``(tokens_list, patch_start_idx)``;
  every list entry is [B, S, P, 2C] with the camera token at 0, register tokens at
  1..patch_start_idx-1 and the Hp x Wp patch grid row-major after them (Hp = H/14, Wp = W/14).
- ``model.camera_head(tokens_list)`` -> list of pose encodings [B, S, 9], one per refinement
  iteration; the last one is the prediction.
- ``model.depth_head(tokens_list, images=images, patch_start_idx=i)`` -> (depth [B, S, H, W, 1],
  conf [B, S, H, W]); ``model.point_head(...)`` alike -> (world points [B, S, H, W, 3], conf).
- ``VGGT.forward`` runs the aggregator under the caller's autocast and the heads with autocast
  disabled (fp32); ``infer`` does the same, calling the submodules itself so that it can also
  keep the last-layer tokens without a second pass.

Pose encoding ("absT_quaR_FoV", ``vggt/utils/pose_enc.py``): translation (3), quaternion XYZW
(4, scalar last, ``vggt/utils/rotation.py``), fov_h, fov_w (radians). Extrinsics are OpenCV
camera-from-world [R | T] (x right, y down, z forward).
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, NavcacheError
from .base import FrozenEncoder, check_device, check_precision
from .base import free_cuda_cache as _free_cuda_cache
from .base import oom_error_type as _oom_type

INSTALL_HINT = "pip install git+https://github.com/facebookresearch/vggt"

#: VGGT's loader constants (``vggt/utils/load_fn.py``, crop mode)
TARGET_SIZE = 518
PATCH_SIZE = 14
PREPROCESS_MODES = ("exact", "fast")

_CLASS_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_]\w*$")

#: ``model_class`` values imported without ``allow_custom_code`` ("module:*" = any class of it):
#: VGGT itself and navcache's tiny random-init stand-in (the demo's, re-exported for the tests). Importing a module runs its code, so a project file
#: naming any other class must say so, as ``trust_remote_code`` does for the hub.
ALLOWED_CLASSES: tuple[str, ...] = (
    "vggt.models.vggt:VGGT",
    "navcache.pipeline.demo.vggt_standin:*",
    "navcache.tests.standins.vggt_standin:*",
    "tests.standins.vggt_standin:*",
)


def class_allowed(model_class: str) -> bool:
    module = model_class.partition(":")[0]
    return model_class in ALLOWED_CLASSES or f"{module}:*" in ALLOWED_CLASSES


def _defined_in_source(model_class: str) -> bool:
    """Whether ``model_class``'s module file defines that class at its top level, read as text with
    ``ast`` (running nothing: importing VGGT pulls in torch, which planning must not pay for).
    False whenever that cannot be told (not installed, no source, a re-exported name): the caller
    then imports it, which gives the precise error."""
    module, _, cls = model_class.partition(":")
    try:
        spec = importlib.util.find_spec(module)
        origin = spec.origin if spec is not None else None
        tree = ast.parse(Path(origin).read_text(encoding="utf-8")) if origin and origin.endswith(".py") else None
    except (ImportError, ValueError, OSError, SyntaxError, UnicodeDecodeError):
        return False
    return tree is not None and any(isinstance(n, ast.ClassDef) and n.name == cls for n in tree.body)


def _installed(model_class: str) -> bool:
    """Whether the top-level package of ``model_class`` is there; looking it up runs none of its
    code (unlike ``find_spec`` of a submodule, which imports the parents)."""
    return importlib.util.find_spec(model_class.partition(":")[0].split(".")[0]) is not None


@dataclass(frozen=True)
class VGGTSettings:
    #: hub id or local folder, passed to ``Class.from_pretrained``
    model: str = "facebook/VGGT-1B"
    #: "package.module:Class" of the model; tests point it at a stand-in
    model_class: str = "vggt.models.vggt:VGGT"
    #: import a ``model_class`` outside ``ALLOWED_CLASSES`` (it runs that module's code)
    allow_custom_code: bool = False
    #: autocast dtype of the aggregator; "auto" = bf16 on CUDA capability >= 8, fp16 on older
    #: CUDA, fp32 (no autocast) on CPU. The heads always run in fp32, as in ``VGGT.forward``.
    dtype: str = "auto"
    #: "auto" = cuda if available else cpu; or cpu, mps, cuda, cuda:N
    device: str = "auto"
    #: also return the last aggregator layer's patch tokens, pooled (large: 2C = 2048 channels)
    keep_tokens: bool = False
    #: average-pool the patch-token grid by token_pool x token_pool
    token_pool: int = 2
    #: reproduce Spatial-MLLM's VGGT input (``src/sampling/sa_sampling.py``): frames taller than
    #: wide are rotated 90 degrees clockwise (PIL ``rotate(-90, expand=True)``) instead of
    #: centre-cropped, and the images reach VGGT as bfloat16 (the plain behaviour: float32).
    #: Spatial-MLLM autocasts bf16 on CUDA, so dtype must be "auto" or "bf16".
    spatial_mllm: bool = False
    #: "exact": PIL bicubic, pixels equal to VGGT's loader; "fast": frames decoded reduced where the
    #: format allows (JPEG DCT scaling, the video decoder's scaler) while still >= 518 wide, then
    #: torch's uint8 antialiased bicubic (within 2 grey levels of PIL: ``preprocess_crop``); on
    #: CUDA the device resizes in float instead (within 2: ``device_crop``) and the CPU only decodes.
    #: "exact" on CUDA: PIL on the CPU, the uint8 result divided on the device (bit-identical).
    preprocess: str = "exact"

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model must be a non-empty hub id or folder, got {self.model!r}")
        if not isinstance(self.model_class, str) or not _CLASS_RE.match(self.model_class):
            raise ValueError(f"model_class must look like 'package.module:Class', got {self.model_class!r}")
        if not isinstance(self.allow_custom_code, bool):
            raise ValueError(f"allow_custom_code must be true or false, got {self.allow_custom_code!r}")
        # a class that is not installed is left to the import, whose error says how to install VGGT
        if not self.allow_custom_code and not class_allowed(self.model_class) and _installed(self.model_class):
            raise ValueError(
                f"model_class {self.model_class!r} is not an allowed VGGT class (allowed: {', '.join(ALLOWED_CLASSES)}); "
                "importing it would run its code: set allow_custom_code: true beside it if you trust it"
            )
        check_precision(self.dtype, "dtype")
        check_device(self.device)
        if not isinstance(self.keep_tokens, bool):
            raise ValueError(f"keep_tokens must be true or false, got {self.keep_tokens!r}")
        if isinstance(self.token_pool, bool) or not isinstance(self.token_pool, int) or self.token_pool < 1:
            raise ValueError(f"token_pool must be an integer >= 1, got {self.token_pool!r}")
        if not isinstance(self.spatial_mllm, bool):
            raise ValueError(f"spatial_mllm must be true or false, got {self.spatial_mllm!r}")
        if self.spatial_mllm and self.dtype not in ("auto", "bf16"):
            raise ValueError(f"spatial_mllm runs VGGT under bf16 autocast as Spatial-MLLM: dtype must be auto or bf16, got {self.dtype!r}")
        if self.preprocess not in PREPROCESS_MODES:
            raise ValueError(f"preprocess must be one of {', '.join(PREPROCESS_MODES)}, got {self.preprocess!r}")


# -- pure conversions (numpy; no torch, no vggt) -----------------------------------------------


def quat_xyzw_to_rotmat(q) -> np.ndarray:
    """Quaternions [..., 4] in XYZW order (scalar last, as VGGT) -> rotation matrices [..., 3, 3].

    q is normalised first, which is what VGGT's ``quat_to_mat`` does implicitly (it scales by
    2 / |q|^2), so q and c*q give the same matrix. A zero quaternion gives NaN, as in VGGT;
    callers that store the result must check finiteness. float64.
    """
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-1:] != (4,):
        raise ValueError(f"quaternions must have shape [..., 4], got {q.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = np.moveaxis(q, -1, 0)
    r = np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    )
    return r.reshape(q.shape[:-1] + (3, 3))


def pose_encoding_to_extri_intri(pose_enc, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """VGGT pose encodings [..., 9] -> (extrinsic [..., 3, 4], intrinsic [..., 3, 3]), float64.

    pose_enc = (T [3], quaternion XYZW [4], fov_h, fov_w) in radians; ``image_hw`` = (H, W) of
    the images VGGT saw (after preprocessing). Extrinsic = [R | T], OpenCV camera-from-world.
    Intrinsic: fy = (H/2) / tan(fov_h/2), fx = (W/2) / tan(fov_w/2), principal point (W/2, H/2)
    (VGGT puts it at the image centre in pixel units, not at (W-1)/2).
    """
    p = np.asarray(pose_enc, dtype=np.float64)
    if p.shape[-1:] != (9,):
        raise ValueError(f"pose encodings must have shape [..., 9], got {p.shape}")
    if len(image_hw) != 2 or any(isinstance(v, bool) or int(v) != v or v <= 0 for v in image_hw):
        raise ValueError(f"image_hw must be two positive integers (H, W), got {image_hw!r}")
    h, w = float(image_hw[0]), float(image_hw[1])
    rot = quat_xyzw_to_rotmat(p[..., 3:7])
    extrinsic = np.concatenate([rot, p[..., :3, None]], axis=-1)
    intrinsic = np.zeros(p.shape[:-1] + (3, 3), dtype=np.float64)
    with np.errstate(divide="ignore"):
        intrinsic[..., 0, 0] = (w / 2.0) / np.tan(p[..., 8] / 2.0)
        intrinsic[..., 1, 1] = (h / 2.0) / np.tan(p[..., 7] / 2.0)
    intrinsic[..., 0, 2] = w / 2.0
    intrinsic[..., 1, 2] = h / 2.0
    intrinsic[..., 2, 2] = 1.0
    return extrinsic, intrinsic


def _resized_height(h: int, w: int, target: int, patch: int) -> int:
    # Same expression, evaluation order and built-in round() (half to even) as VGGT's loader,
    # so that ties land on the same side: h * (518 / w) / 14, not h * 518 / w / 14.
    return round(h * (target / w) / patch) * patch


def processed_size(h: int, w: int, target: int = TARGET_SIZE, patch: int = PATCH_SIZE) -> tuple[int, int]:
    """(H', W') that VGGT's crop-mode loader gives an h x w image: W' = target, H' = the
    aspect-preserving height rounded to a multiple of ``patch``, centre-cropped to ``target``."""
    for name, v in (("h", h), ("w", w), ("target", target), ("patch", patch)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if target % patch:
        raise ValueError(f"target ({target}) must be a multiple of patch ({patch})")
    nh = _resized_height(int(h), int(w), int(target), int(patch))
    if nh < patch:
        raise ValueError(f"a {h}x{w} (h x w) image is too wide for VGGT's crop mode: its height rounds to {nh} pixels")
    return min(nh, int(target)), int(target)


def preprocess_crop(frames, rotate_portrait: bool = False, fast: bool = False, as_uint8: bool = False):
    """Decoded RGB frames uint8 [S, H, W, 3] -> torch tensor [S, 3, H', W']: float32 in [0, 1], or
    with ``as_uint8`` the uint8 pixels (channels-last in memory) before ``ToTensor``'s division (a CUDA caller copies those
    and divides on the device: ``VGGTAdapter.infer``; x / 255 in float32 is correctly rounded on
    either side, so the result is bit-identical).

    ``rotate_portrait`` (``VGGTSettings.spatial_mllm``): frames with H > W are first rotated 90
    degrees clockwise, as Spatial-MLLM's loader does (``img.rotate(-90, expand=True)``), so H' x W'
    is ``processed_size(W, H)``; other frames are unchanged.

    Reproduces ``load_and_preprocess_images(paths, mode="crop")``: PIL bicubic resize to
    (W', resized height) with ``processed_size``'s rounding, ``ToTensor`` scaling (uint8 / 255 in
    float32) and a centre crop of the height to 518 (top offset floor((h' - 518) / 2)). Given the
    same RGB pixels the result is identical; the loader's other branches do not arise here
    (alpha compositing onto white: frames are RGB; white padding of mixed sizes: one [S, H, W, 3]
    array has one size). Pixels can still differ from VGGT's own pipeline when the frames were
    decoded by a different JPEG/video decoder than PIL.

    ``fast`` (``VGGTSettings.preprocess: fast``): the resize is torch's antialiased bicubic on
    uint8 (the kernel and fixed-point scheme of PIL's, a = -0.5, one batched call, ~8x faster than
    PIL frame by frame) instead of PIL itself: its rounding differs from PIL's by at most 2 grey
    levels on under 1% of the pixels (measured; tests pin <= 2/255 max, <= 0.05/255 mean).
    """
    import torch

    a = np.asarray(frames)
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3 or a.shape[0] < 1:
        raise ValueError(f"frames must be uint8 [S, H, W, 3] RGB with S >= 1, got {a.dtype} {a.shape}")
    if rotate_portrait and a.shape[1] > a.shape[2]:
        a = np.rot90(a, k=-1, axes=(1, 2))  # clockwise: PIL's rotate(-90, expand=True) is ROTATE_270
    s, h, w, _ = a.shape
    out_h, out_w = processed_size(h, w)
    rh = _resized_height(h, w, TARGET_SIZE, PATCH_SIZE)
    top = (rh - out_h) // 2
    resized = _resize_torch(a, out_w, rh) if fast else _resize_pil(a, out_w, rh)  # uint8 [S, 3, rh, W'], any strides
    cropped = resized[:, :, top : top + out_h]
    if as_uint8:
        # channels-last, as decoded and resized: the transpose to planar is left to the device
        # (``VGGTAdapter.infer``), where it is free; a row crop of it is a memcpy
        return cropped.contiguous(memory_format=torch.channels_last)
    # cropped in uint8 and converted once, straight into the output: no float copy of the
    # uncropped frame (ToTensor's x / 255 in float32 is the same division, done in place)
    return torch.empty((s, 3, out_h, out_w), dtype=torch.float32).copy_(cropped).div_(255)


def _resize_pil(a: np.ndarray, width: int, height: int):
    """PIL bicubic, frame by frame: uint8 [S, H, W, 3] -> uint8 torch [S, 3, height, width] (a channels-last view)."""
    import torch
    from PIL import Image

    out = np.empty((len(a), height, width, 3), np.uint8)
    for i in range(len(a)):
        out[i] = np.asarray(Image.fromarray(np.ascontiguousarray(a[i]), mode="RGB").resize((width, height), Image.Resampling.BICUBIC))
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def _resize_torch(a: np.ndarray, width: int, height: int):
    """torch's antialiased bicubic in uint8, all frames in one call: uint8 [S, H, W, 3] -> uint8
    torch [S, 3, height, width] (channels-last: the layout uint8 resizing is fast in)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)
    if tuple(x.shape[-2:]) == (height, width):
        return x
    return F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)


def frames_for_device(frames, rotate_portrait: bool = False):
    """Decoded RGB frames uint8 [S, H, W, 3] -> uint8 torch [S, 3, H, W] (channels-last in memory,
    rotated as ``preprocess_crop``), unresized: ``VGGTAdapter.infer`` resizes and crops them on
    the device (``device_crop``). The CPU's whole share of ``preprocess: fast`` on CUDA."""
    import torch

    a = np.asarray(frames)
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3 or a.shape[0] < 1:
        raise ValueError(f"frames must be uint8 [S, H, W, 3] RGB with S >= 1, got {a.dtype} {a.shape}")
    if rotate_portrait and a.shape[1] > a.shape[2]:
        a = np.rot90(a, k=-1, axes=(1, 2))
    processed_size(a.shape[1], a.shape[2])  # refuses what the crop cannot handle, before the copy
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)


def device_crop(x):
    """float [S, 3, H, W] in [0, 1] on any device -> VGGT's crop [S, 3, H', W'] (``processed_size``):
    torch's antialiased bicubic in float (PIL's kernel, a = -0.5; no uint8 rounding between its
    passes), clipped to [0, 1] as PIL clips, then the centre rows. Unchanged when already that
    size. Within 2 grey levels of PIL on natural frames (measured max 1.7, mean 0.3; tests pin it)."""
    import torch.nn.functional as F

    h, w = int(x.shape[-2]), int(x.shape[-1])
    out_h, out_w = processed_size(h, w)
    if (h, w) == (out_h, out_w):
        return x
    rh = _resized_height(h, w, TARGET_SIZE, PATCH_SIZE)
    top = (rh - out_h) // 2
    y = F.interpolate(x, size=(rh, out_w), mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
    return y[:, :, top : top + out_h]


def decode_target(rotate_portrait: bool = False) -> tuple[int, int]:
    """The (width, height) a reduced decode must still cover (``decode.reduction``'s ``resize_to``)
    for VGGT's crop: the width alone sets the scale (518 / W), so only it must stay >= 518; with
    ``rotate_portrait`` either side may become the width."""
    return (TARGET_SIZE, TARGET_SIZE) if rotate_portrait else (TARGET_SIZE, 1)


# -- the adapter -----------------------------------------------------------------------------


class VGGTAdapter(FrozenEncoder):
    """Loads lazily (``load()``) so that planning and ``status`` never touch the weights."""

    precision_field = "dtype"

    # -- cheap metadata -----------------------------------------------------------------------
    def resolved_dtype(self) -> str:
        return self.resolved_precision()

    def architecture(self) -> str:
        return self.s.model_class

    def output_identity(self) -> dict:
        ident = {
            "class": self.s.model_class,
            "preprocess": {"mode": "crop", "target": TARGET_SIZE, "patch": PATCH_SIZE, "resample": "PIL.BICUBIC"},
            "keep_tokens": self.s.keep_tokens,
        }
        if self.s.spatial_mllm:  # absent otherwise: existing caches keep their fingerprints
            ident["spatial_mllm"] = {"portrait": "rotate 90 clockwise", "input_dtype": "bfloat16"}
        if self.s.preprocess == "fast":  # absent for "exact": existing caches keep their fingerprints
            ident["preprocess"] = {**ident["preprocess"], "resample": "torch uint8 bicubic antialias", "decode": "reduced (fit)"}
        if self.s.keep_tokens:
            # the pool size changes nothing when no tokens are kept
            ident["token_pool"] = self.s.token_pool
        return ident

    def check(self, field: str, seen: dict | None = None) -> str:
        """``model_class`` importable (``field`` with ``model`` replaced by ``model_class`` in its
        errors), then the weights as ``FrozenEncoder.check``. Never loads weights, and imports VGGT
        only when its module does not visibly define the class (planning stays free of torch)."""
        if not _defined_in_source(self.s.model_class):
            self._import_class(field.rsplit(".", 1)[0] + ".model_class")
        return super().check(field, seen)

    def preprocess(self, pixels):
        """uint8 [S, H, W, 3] -> [S, 3, ., .] for ``infer``. On CUDA: uint8, copied pinned and divided
        there; "exact" resized by PIL on the CPU first (bit-identical to VGGT's loader), "fast" not
        resized at all (the device does it). On the CPU: float32 in [0, 1] at the crop's size."""
        fast, cuda = self.s.preprocess == "fast", self.resolved_device().startswith("cuda")
        if fast and cuda:  # the CPU only decodes: resize and crop run on the device (``device_crop``)
            return frames_for_device(pixels, rotate_portrait=self.s.spatial_mllm)
        return preprocess_crop(pixels, rotate_portrait=self.s.spatial_mllm, fast=fast, as_uint8=cuda)

    # -- heavy path ---------------------------------------------------------------------------
    def _import_class(self, field: str = "vggt.model_class"):
        """The class ``model_class`` names; ConfigError for one outside ``ALLOWED_CLASSES`` without
        ``allow_custom_code`` (checked again here: settings may be built without ``__post_init__``'s
        lookup finding the module), NavcacheError when it cannot be imported."""
        module_name, _, cls_name = self.s.model_class.partition(":")
        if not self.s.allow_custom_code and not class_allowed(self.s.model_class) and _installed(self.s.model_class):
            raise ConfigError(f"{field}: {self.s.model_class!r} is not an allowed VGGT class (allowed: "
                              f"{', '.join(ALLOWED_CLASSES)}); set allow_custom_code: true beside it if you trust its code")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            custom = "" if self.s.allow_custom_code or class_allowed(self.s.model_class) else (
                f"; a class other than {ALLOWED_CLASSES[0]} also needs allow_custom_code: true")
            raise NavcacheError(
                f"{field}: VGGT model class {self.s.model_class!r} cannot be imported ({e}); VGGT is not on PyPI, "
                f"install it with: {INSTALL_HINT}{custom}"
            ) from None
        try:
            return getattr(module, cls_name)
        except AttributeError:
            raise NavcacheError(f"{field}: module {module_name!r} has no class {cls_name!r} ({field} = {self.s.model_class!r})") from None

    def _load_model(self):
        cls = self._import_class()
        try:
            # huggingface_hub's PyTorchModelHubMixin (VGGT's base) reads model.safetensors when there
            # is one and a .bin only through torch.load(weights_only=True); it takes no
            # use_safetensors (extra keywords go to the model's __init__)
            return cls.from_pretrained(self.s.model)
        # OSError: not downloadable / not in the cache; ValueError: huggingface_hub's
        # HFValidationError for a local path that does not exist (read as a repo id)
        except (OSError, ValueError) as e:
            raise NavcacheError(f"VGGT weights {self.s.model!r} cannot be loaded: {e}") from None

    def infer(self, images) -> dict[str, np.ndarray]:
        """All S frames of one episode in ONE forward (VGGT relates them through global attention).

        images: torch [S, 3, H, W]: float32 in [0, 1] with H and W multiples of 14
        (``preprocess_crop``), or uint8 (divided by 255 on the device, as ``ToTensor`` does, then
        ``device_crop``: a no-op at the crop's size, VGGT's resize and crop otherwise).
        Returns numpy float32 arrays: ``extrinsic`` [S, 3, 4], ``intrinsic`` [S, 3, 3], ``depth``
        [S, H, W], ``depth_conf`` [S, H, W], ``world_points`` [S, H, W, 3], ``world_points_conf``
        [S, H, W], and with ``keep_tokens`` ``tokens`` [S, Hp // pool, Wp // pool, 2C].
        ``torch.OutOfMemoryError`` propagates (after the CUDA cache is freed); the caller decides
        what a too-long episode means.
        """
        self.load()
        if getattr(images, "ndim", None) != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a torch tensor [S, 3, H, W], got shape {tuple(getattr(images, 'shape', ()))}")
        try:
            return self._forward(images)
        except _oom_type() as e:
            err = e
        # Drop the locals of the failed forward (activations referenced from the traceback)
        # before emptying the cache; otherwise the memory cannot be returned.
        traceback.clear_frames(err.__traceback__)
        _free_cuda_cache()
        raise err

    def _forward(self, images) -> dict[str, np.ndarray]:
        import torch
        import torch.nn.functional as F

        model = self._model
        dev = self.resolved_device()
        dev_type = torch.device(dev).type
        patch = int(getattr(model.aggregator, "patch_size", PATCH_SIZE))
        # Spatial-MLLM hands VGGT bf16 images (their rounding reaches every output); plain: float32
        in_dtype = torch.bfloat16 if self.s.spatial_mllm else torch.float32
        if images.dtype == torch.uint8:
            u8 = images.pin_memory() if dev_type == "cuda" else images  # pinned: the copy is a DMA
            x = device_crop(u8.to(dev, non_blocking=True).float().div_(255)).contiguous().to(in_dtype)[None]  # [1, S, 3, H, W]
        else:
            x = images.to(dev, dtype=in_dtype, non_blocking=True)[None]  # [1, S, 3, H, W]
        s, _, h, w = tuple(x.shape[1:])
        if h % patch or w % patch:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch}")
        hp, wp = h // patch, w // patch

        with torch.inference_mode():
            with self.autocast():
                tokens_list, patch_start_idx = model.aggregator(x)
            with torch.autocast(device_type=dev_type, enabled=False):
                # VGGT's tokens come out fp32 (the residual stream stays fp32 under autocast);
                # .float() is then free, and it keeps the fp32 heads working if a layer is not.
                tokens_list = [t.float() for t in tokens_list]
                pose_enc = model.camera_head(tokens_list)[-1]
                depth, depth_conf = model.depth_head(tokens_list, images=x, patch_start_idx=patch_start_idx)
                points, points_conf = model.point_head(tokens_list, images=x, patch_start_idx=patch_start_idx)
                tokens = None
                if self.s.keep_tokens:
                    last = tokens_list[-1][0, :, patch_start_idx:]  # [S, Hp*Wp, 2C]
                    if last.shape[1] != hp * wp:
                        raise NavcacheError(f"VGGT returned {last.shape[1]} patch tokens per frame, expected {hp}x{wp}")
                    grid = last.reshape(s, hp, wp, -1).permute(0, 3, 1, 2)
                    pool = self.s.token_pool
                    # floor: a grid not divisible by the pool drops its last row/column
                    tokens = F.avg_pool2d(grid, pool, pool).permute(0, 2, 3, 1) if pool > 1 else grid.permute(0, 2, 3, 1)

        def arr(t, shape, name):
            if tuple(t.shape) != shape:
                raise NavcacheError(f"VGGT {name} has shape {tuple(t.shape)}, expected {shape}")
            return t.detach().float().cpu().numpy()

        pose = arr(pose_enc, (1, s, 9), "pose encoding")[0]
        extrinsic, intrinsic = pose_encoding_to_extri_intri(pose, (h, w))
        out = {
            "extrinsic": extrinsic.astype(np.float32),
            "intrinsic": intrinsic.astype(np.float32),
            "depth": np.ascontiguousarray(arr(depth, (1, s, h, w, 1), "depth")[0, ..., 0]),
            "depth_conf": arr(depth_conf, (1, s, h, w), "depth_conf")[0],
            "world_points": arr(points, (1, s, h, w, 3), "world_points")[0],
            "world_points_conf": arr(points_conf, (1, s, h, w), "world_points_conf")[0],
        }
        if tokens is not None:
            out["tokens"] = np.ascontiguousarray(tokens.cpu().numpy(), dtype=np.float32)
        return out
