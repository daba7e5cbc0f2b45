"""A frozen ViT-style image encoder from transformers (DINOv3 by default; DINOv2 works too).

Token layout of ``last_hidden_state`` [N, 1 + R + Hp*Wp, D]: CLS at 0, R register tokens
(``config.num_register_tokens``; 4 for released DINOv3), then the patch grid row-major.

Preprocessing follows the model's own ``preprocessor_config.json`` (resize to ``size`` with
bilinear antialiasing, rescale, normalise with ``image_mean``/``image_std``). We apply it with
``torch.nn.functional.interpolate(antialias=True)`` instead of instantiating the transformers
processor because the DINOv3 processor in transformers >= 5 requires torchvision, which has no
wheel matching the CPU torch build on our machines; torchvision's tensor resize is this same call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import NavcacheError
from .base import FrozenEncoder, check_device, check_precision


@dataclass(frozen=True)
class EncoderSettings:
    #: hub id or local folder, passed to ``AutoModel.from_pretrained``
    model: str = "facebook/dinov3-vitb16-pretrain-lvd1689m"
    revision: str | None = None
    trust_remote_code: bool = False
    #: "auto" = cuda if available else cpu
    device: str = "auto"
    #: "auto" = bf16 autocast on CUDA (Ampere+; fp16 before), fp32 on CPU
    precision: str = "auto"

    def __post_init__(self):
        check_precision(self.precision)
        check_device(self.device)


def _processor_config(model: str, revision: str | None) -> dict:
    from transformers.image_processing_utils import ImageProcessingMixin

    try:
        cfg, _ = ImageProcessingMixin.get_image_processor_dict(model, revision=revision)
    except OSError as e:
        raise NavcacheError(f"encoder {model!r}: cannot read its preprocessor_config.json: {e}") from None
    return cfg


class HFVisionEncoder(FrozenEncoder):
    """Loads lazily (``load()``) so that planning and ``status`` never touch the weights."""

    # -- cheap metadata -----------------------------------------------------------------------
    def model_config(self):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.s.model, revision=self.s.revision, trust_remote_code=self.s.trust_remote_code)

    def hidden_size(self) -> int:
        return int(self.model_config().hidden_size)

    def processor_config(self) -> dict:
        return _processor_config(self.s.model, self.s.revision)

    def architecture(self) -> str:
        return type(self.model_config()).__name__

    def output_identity(self) -> dict:
        return {
            "class": self.architecture(),
            "processor": {k: v for k, v in self.processor_config().items() if k not in ("processor_class", "image_processor_type")},
        }

    # -- heavy path ---------------------------------------------------------------------------
    def _load_model(self):
        import transformers
        from transformers import AutoModel

        transformers.utils.logging.disable_progress_bar()
        # use_safetensors=None: safetensors whenever the checkpoint has them, else a .bin read with
        # torch.load(weights_only=True), never an arbitrary unpickled object; True would refuse
        # .bin-only checkpoints (tests/pipeline/test_confinement.py checks both cases)
        return AutoModel.from_pretrained(self.s.model, revision=self.s.revision, trust_remote_code=self.s.trust_remote_code,
                                         use_safetensors=None)

    def _on_loaded(self, model) -> None:
        import torch

        self._n_reg = int(getattr(model.config, "num_register_tokens", 0) or 0)
        self._patch = int(model.config.patch_size)
        pc = self.processor_config()
        size = pc.get("size") or {"height": 224, "width": 224}
        self._size = (int(size.get("height", size.get("shortest_edge", 224))), int(size.get("width", size.get("shortest_edge", 224))))
        self._mean = torch.tensor(pc.get("image_mean", (0.485, 0.456, 0.406)), dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(pc.get("image_std", (0.229, 0.224, 0.225)), dtype=torch.float32).view(1, 3, 1, 1)
        self._scale = float(pc.get("rescale_factor", 1 / 255))

    def preprocess(self, pixels: np.ndarray):
        """uint8 [N, H, W, 3] RGB -> float32 [N, 3, S_h, S_w] normalised. Thread-safe, CPU."""
        import torch
        import torch.nn.functional as F

        self.load()
        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float()
        if tuple(x.shape[-2:]) != self._size:
            x = F.interpolate(x, size=self._size, mode="bilinear", antialias=True, align_corners=False)
        return (x * self._scale - self._mean) / self._std

    def encode(self, x) -> tuple[Any, Any]:
        """[N, 3, S_h, S_w] -> (cls [N, D] float32, patches [N, Hp, Wp, D] float32), on CPU."""
        import torch

        model = self.load()
        with torch.inference_mode(), self.autocast():
            h = model(pixel_values=x.to(self.resolved_device(), non_blocking=True)).last_hidden_state
        h = h.float()
        hp, wp = x.shape[-2] // self._patch, x.shape[-1] // self._patch
        cls = h[:, 0]
        patches = h[:, 1 + self._n_reg :].reshape(h.shape[0], hp, wp, h.shape[-1])
        return cls.cpu(), patches.cpu()
