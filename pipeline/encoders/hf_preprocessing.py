"""Each vision tower's own image preprocessing, read from its ``preprocessor_config.json``.

uint8 RGB frames [N, H, W, 3] -> float32 pixel_values [N, 3, h, w], equal (max abs difference
<= 1e-5, tests/pipeline/test_hf_preprocessing.py) to what the tower's transformers image
processor produces for the same frames:

- DINOv2 (with or without registers: ``BitImageProcessor``), SigLIP and fixed-resolution SigLIP2
  (``SiglipImageProcessor``), CLIP (``CLIPImageProcessor``): the transformers processor itself,
  in its PIL backend (``*ImageProcessorPil``), the one ``AutoImageProcessor`` picks when
  torchvision is absent. Using it, rather than re-implementing shortest-edge resizing, PIL's
  uint8 bicubic resampling and centre-crop rounding, is what makes the pixels identical; its cost
  is one Python call per frame inside one processor call per batch.
- DINOv3 (``DINOv3ViTImageProcessor``): transformers has no PIL backend for it, and its
  torchvision backend needs torchvision, which navcache does not require. Its steps are few and
  are reproduced here with the tensor ops torchvision itself calls: rescale to float, resize to
  (height, width) with ``torch.nn.functional.interpolate(mode="bilinear", antialias=True)``,
  normalise. Options beyond those are refused. On a CUDA device the uint8 frames travel to the
  device and these steps run there; ``fast=True`` resizes in uint8 on the CPU instead (within
  one grey level of the processor, see ``_Dinov3Preprocess``).

Options a processor would not apply (keys it does not know) or that navcache cannot honour are
refused with ``UnsupportedPreprocessing`` naming them, never ignored. The variable-resolution
SigLIP2 NaFlex processor (``Siglip2ImageProcessor``) returns patch sequences, not an image grid,
and is refused as a whole.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import NavcacheError

#: processor class (as named in preprocessor_config.json, legacy ``Fast`` suffix removed) -> PIL backend class
PIL_PROCESSORS = {
    "BitImageProcessor": "BitImageProcessorPil",  # DINOv2, DINOv2 with registers
    "SiglipImageProcessor": "SiglipImageProcessorPil",  # SigLIP, fixed-resolution SigLIP2
    "CLIPImageProcessor": "CLIPImageProcessorPil",
}
#: old configs name a feature extractor instead of an image processor
LEGACY_NAMES = {"CLIPFeatureExtractor": "CLIPImageProcessor", "BitFeatureExtractor": "BitImageProcessor"}
DINOV3 = "DINOv3ViTImageProcessor"
SUPPORTED = (*PIL_PROCESSORS, DINOV3)
#: config keys that describe the file, not the pixels
METADATA_KEYS = frozenset({"image_processor_type", "feature_extractor_type", "processor_class", "auto_map", "_processor_class"})
#: options whose value does not change the pixels of an RGB uint8 frame, whatever it is
INERT = frozenset({"device", "return_tensors", "disable_grouping", "image_seq_length", "do_convert_rgb", "default_to_square"})


class UnsupportedPreprocessing(NavcacheError):
    """A processor, or processor options, that navcache cannot reproduce exactly."""


def processor_class_name(config: dict) -> str:
    """The processor class a preprocessor_config.json names, without the legacy ``Fast`` / ``Pil`` suffix."""
    name = config.get("image_processor_type") or LEGACY_NAMES.get(config.get("feature_extractor_type") or "", "")
    for suffix in ("Fast", "Pil"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def build_preprocessor(config: dict, model: str = "model", fast: bool = False) -> Callable[..., Any]:
    """``preprocess(uint8 [N, H, W, 3], device=None) -> float32 torch [N, 3, h, w]`` for a preprocessor config.

    ``fast``: resize in uint8 on the CPU (``_Dinov3Preprocess``; DINOv3 only). Raises
    ``UnsupportedPreprocessing`` naming the processor or the options it cannot honour.
    """
    name = processor_class_name(config)
    if name == DINOV3:
        return _Dinov3Preprocess(config, model, fast)
    if fast:
        raise UnsupportedPreprocessing(f"encoder {model!r}: preprocess 'fast' is implemented for {DINOV3} only, not {name or '(none named)'!r}; "
                                       "use preprocess: exact")
    if name in PIL_PROCESSORS:
        return _PilProcessor(name, config, model)
    hint = " (SigLIP2 NaFlex: variable-resolution patch sequences; use a fixed-resolution SigLIP2 checkpoint)" if name == "Siglip2ImageProcessor" else ""
    raise UnsupportedPreprocessing(
        f"encoder {model!r}: image processor {name or '(none named)'!r} is not supported{hint}; supported: {', '.join(SUPPORTED)}"
    )


def _refuse(model: str, name: str, bad: dict[str, Any]) -> None:
    if bad:
        listed = ", ".join(f"{k}={v!r}" for k, v in sorted(bad.items()))
        raise UnsupportedPreprocessing(f"encoder {model!r}: {name} options navcache cannot apply exactly: {listed}")


class _PilProcessor:
    """The transformers processor itself (PIL backend), one call per batch of frames."""

    def __init__(self, name: str, config: dict, model: str):
        import transformers

        cls = getattr(transformers, PIL_PROCESSORS[name])
        known = set(cls.valid_kwargs.__annotations__)
        bad = {k: v for k, v in config.items() if k not in known and k not in METADATA_KEYS}
        # navcache hands over channels-last RGB frames and needs channels-first pixel_values
        if config.get("input_data_format") not in (None, "channels_last"):
            bad["input_data_format"] = config["input_data_format"]
        if config.get("data_format") not in (None, "channels_first"):
            bad["data_format"] = config["data_format"]
        _refuse(model, name, bad)
        self.processor = cls.from_dict({k: v for k, v in config.items() if k not in METADATA_KEYS})

    def __call__(self, pixels: np.ndarray, device: str | None = None):
        """uint8 [N, H, W, 3] -> float32 torch [N, 3, h, w] on ``device`` (None: the CPU); the
        processor itself always runs on the CPU."""
        import torch

        # an explicit layout: a 1x300 or 3xW frame would otherwise be read as channels-first
        out = self.processor([np.asarray(p) for p in pixels], input_data_format="channels_last", data_format="channels_first", return_tensors="np")
        x = torch.from_numpy(np.ascontiguousarray(out["pixel_values"], dtype=np.float32))
        return x if device in (None, "cpu") else x.to(device)


class _Dinov3Preprocess:
    """DINOv3ViTImageProcessor's steps (rescale -> resize -> normalise) on torch tensors.

    torchvision's ``resize`` of a float tensor is ``interpolate(..., antialias=True)`` and its
    ``normalize`` is ``(x - mean) / std``; we call the same ops in the same order, so no
    torchvision is needed for the same pixels.

    Where the work runs (``__call__``'s ``device`` and this object's ``fast``):

    - ``device`` cuda: the uint8 frames go to the device (through pinned memory, asynchronously)
      and every float step runs there; the CPU only copies bytes. Exact (same ops).
    - CPU, ``fast=False`` (default): exact, with one float32 copy at the frames' size (the
      processor resizes floats; that copy is the price of equal pixels), scaled in place.
    - CPU, ``fast=True``: resized in uint8 (torch's antialiased bilinear on channels-last uint8,
      the same kernel rounded to integers), then rescaled and normalised at the output size only.
      Differs from the processor by the rounding: at most 1 grey level before normalising,
      <= 1/255/min(std) after (0.0175 with the ImageNet std); tests pin that bound.
    """

    #: option -> values this path implements (None = the processor's default)
    ALLOWED: dict[str, tuple] = {
        "do_resize": (None, True),
        "resample": (None, 2),  # PIL BILINEAR, the DINOv3 default
        "do_center_crop": (None, False),
        "do_pad": (None, False),
        "input_data_format": (None, "channels_last"),
        "data_format": (None, "channels_first"),
    }
    #: options whose value is read below
    VALUES = frozenset({"size", "crop_size", "pad_size", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std"})

    def __init__(self, config: dict, model: str, fast: bool = False):
        # no torch here: planning builds this to check the options, and must not import torch
        bad = {k: v for k, v in config.items() if k not in METADATA_KEYS | INERT | self.VALUES | set(self.ALLOWED)}
        bad.update({k: config[k] for k in self.ALLOWED if k in config and config[k] not in self.ALLOWED[k]})
        size = config.get("size") or {"height": 224, "width": 224}
        size = {k: v for k, v in size.items() if v is not None} if isinstance(size, dict) else size
        if not isinstance(size, dict) or set(size) != {"height", "width"}:
            bad["size"] = size
        _refuse(model, DINOV3, bad)
        self.size = (int(size["height"]), int(size["width"]))
        self.fast = bool(fast)
        self.scale = float(config.get("rescale_factor") or 1 / 255) if config.get("do_rescale") is not False else None
        self.normalize = config.get("do_normalize", True) is not False
        mean, std = config.get("image_mean") or (0.485, 0.456, 0.406), config.get("image_std") or (0.229, 0.224, 0.225)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)

    def __call__(self, pixels, device: str | None = None):
        """uint8 [N, H, W, 3] (numpy or torch, on the CPU) -> float32 torch [N, 3, h, w] on ``device``
        (None: the CPU)."""
        import torch

        u8 = torch.from_numpy(np.ascontiguousarray(pixels)) if isinstance(pixels, np.ndarray) else pixels
        if u8.dtype != torch.uint8 or u8.ndim != 4 or u8.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 [N, H, W, 3] RGB, got {u8.dtype} {tuple(u8.shape)}")
        dev = torch.device(device or "cpu")
        if dev.type == "cuda":
            # pinned: the copy is a DMA that overlaps the encoder; the caching host allocator keeps
            # the buffer alive until the copy has run
            u8 = u8.pin_memory().to(dev, non_blocking=True)
        elif dev.type != "cpu":
            u8 = u8.to(dev)
        x = u8.permute(0, 3, 1, 2)  # a channels-last view [N, 3, H, W]: no copy
        if self.fast and dev.type == "cpu":
            # uint8 resizing is fast in channels-last (the layout it comes in)
            return self._finish(self._resize(x), resized=True)
        # planar before float: the transpose moves bytes, not floats, and torch's float resize
        # runs about twice as fast on planar tensors (measured: 3.9 vs 5.4 ms a 640x480 frame)
        return self._finish(self._resize(self._rescale(x.contiguous().float())), resized=False)

    def _rescale(self, x):
        return x.mul_(self.scale) if self.scale is not None else x

    def _resize(self, x):
        """Antialiased bilinear to ``size`` (float or uint8 in, same dtype out); unchanged when already there."""
        import torch.nn.functional as F

        if tuple(x.shape[-2:]) == self.size:
            return x
        return F.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False)

    def _finish(self, x, resized: bool):
        """Contiguous float32 [N, 3, h, w]: rescaled first when ``resized`` (uint8 input), then normalised."""
        import torch

        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        if resized:
            # planar in uint8, then float: the channels-last -> planar transpose moves a quarter of
            # the bytes, and every float op after it runs on contiguous memory (bitwise the same
            # result as transposing the floats; measured 5.0 -> 1.1 ms for 8 frames at 224 px)
            x = self._rescale(x.contiguous().float())
        x = x.contiguous()
        return x.sub_(mean).div_(std) if self.normalize else x
