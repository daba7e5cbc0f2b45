"""A frozen ViT-style image encoder from transformers (DINOv3 by default; DINOv2, DINOv2 with
registers, CLIP, SigLIP and fixed-resolution SigLIP2 too: ``towers.py``).

Token layout of the sequence [N, (1) + R + Hp*Wp, D]: CLS at 0 where the family has one, R register
tokens (``config.num_register_tokens``; 4 for released DINOv3), then the patch grid row-major.
``layer`` picks ``last_hidden_state`` (default) or an inner block (``towers.run_tower``).

Preprocessing is the model's own: ``hf_preprocessing.build_preprocessor`` turns its
``preprocessor_config.json`` into the pixels its transformers image processor produces (resample
filter, shortest-edge resize, centre crop included), and refuses options it cannot honour.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ..errors import NavcacheError
from .base import FrozenEncoder, check_device, check_precision
from .towers import check_layer, layout, load_tower, run_tower, tower_class, truncate_for_layer, vision_config
from .hf_preprocessing import DINOV3, UnsupportedPreprocessing, build_preprocessor, processor_class_name
from .weights import model_metadata


PREPROCESS_MODES = ("exact", "fast")


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
    #: "exact": pixels equal to the model's transformers processor (on a CUDA device the resize runs
    #: there, from uint8); "fast" (DINOv3 only): frames decoded reduced towards the model's input
    #: size where the format allows (JPEG DCT scaling, the video decoder's scaler: ``decode.reduction``),
    #: and on the CPU resized in uint8 (within one grey level of "exact",
    #: ``hf_preprocessing._Dinov3Preprocess``); on CUDA the resize itself is exact
    preprocess: str = "exact"
    #: "last": last_hidden_state (after the final norm); an int k: hidden_states[k] (-2 = the
    #: second-to-last block, as Prismatic/OpenVLA read their towers)
    layer: int | str = "last"

    def __post_init__(self):
        check_precision(self.precision)
        check_device(self.device)
        check_layer(self.layer)
        if self.preprocess not in PREPROCESS_MODES:
            raise ValueError(f"preprocess must be one of {', '.join(PREPROCESS_MODES)}, got {self.preprocess!r}")


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

    def facts(self) -> dict:
        """Config class name, hidden and patch size, processor options: read through transformers
        once per weights version (``weights.model_metadata``), so planning imports no transformers;
        kept for this encoder's life (its memo lookup stats and hashes the weights files: ~ms a call,
        and a stage asks for these a dozen times a run)."""
        return self._facts

    @cached_property
    def _facts(self) -> dict:
        return model_metadata(self.s.model, self.s.revision, self._read_facts, {"trust_remote_code": self.s.trust_remote_code})

    def _read_facts(self) -> dict:
        cfg = self.model_config()
        vcfg = vision_config(cfg)
        patch = getattr(vcfg, "patch_size", None)
        return {"class": type(cfg).__name__, "hidden_size": int(vcfg.hidden_size), "patch_size": None if patch is None else int(patch),
                "processor": _processor_config(self.s.model, self.s.revision)}

    def hidden_size(self) -> int:
        return int(self.facts()["hidden_size"])

    def patch_size(self) -> int:
        return int(self.facts()["patch_size"])

    def processor_config(self) -> dict:
        return self.facts()["processor"]

    def architecture(self) -> str:
        return self.facts()["class"]

    def output_identity(self) -> dict:
        pc = self.processor_config()
        ident = {
            "class": self.architecture(),
            "processor": {k: v for k, v in pc.items() if k not in ("processor_class", "image_processor_type")},
        }
        if processor_class_name(pc) != DINOV3:
            # pixels now come from the transformers processor itself: caches of other towers made
            # with the old re-implementation (squashed, bilinear) must not be reused; DINOv3's are
            # unchanged (same ops), so its identity keeps the keys it was fingerprinted with
            ident["preprocessing"] = "transformers-processor"
        if self.decode_fit:  # absent for "exact": existing caches keep their fingerprints
            ident["preprocess"] = "fast: reduced-size decode" + (", uint8 resize on the CPU" if self._fast else "")
        if self.s.layer != "last":  # likewise absent for the default
            ident["layer"] = self.s.layer
        return ident

    @property
    def decode_fit(self) -> bool:
        """Frames are to be decoded reduced towards the input size (``Source.read_frames(fit=True)``)."""
        return self.s.preprocess == "fast"

    @property
    def _fast(self) -> bool:
        """uint8 resizing applies only where preprocessing runs on the CPU; on CUDA "fast" is exact."""
        return self.s.preprocess == "fast" and not self.resolved_device().startswith("cuda")

    def check(self, field: str, seen: dict | None = None) -> str:
        """The base check (weights reachable), then the preprocessing: ``UnsupportedPreprocessing``
        (a NavcacheError naming ``field`` and the options) before any frame is decoded."""
        where = super().check(field, seen)
        try:
            build_preprocessor(self.processor_config(), self.s.model, self._fast)
        except UnsupportedPreprocessing as e:
            raise UnsupportedPreprocessing(f"{field}: {e}") from None
        return where

    # -- heavy path ---------------------------------------------------------------------------
    def _load_model(self):
        # safetensors whenever the checkpoint has them, else a .bin read with torch.load(weights_only=True),
        # never an arbitrary unpickled object (tests/pipeline/test_confinement.py checks both cases)
        model = load_tower(self.s.model, self.s.revision, self.s.trust_remote_code)
        truncate_for_layer(model, self.s.layer)
        return model

    def _on_loaded(self, model) -> None:
        _, has_cls = tower_class(model.config, self.s.model)
        self._layout = layout(model.config, has_cls)
        self._patch = int(vision_config(model.config).patch_size)

    @cached_property
    def _preprocess(self):
        """The model's image preprocessing, from its processor config alone (no weights)."""
        return build_preprocessor(self.processor_config(), self.s.model, self._fast)

    def preprocess(self, pixels: np.ndarray):
        """uint8 [N, H, W, 3] RGB -> float32 [N, 3, S_h, S_w] as the model's image processor makes them.

        Thread-safe; needs no weights (the processor config only). On a CUDA device the result is
        already there (the uint8 frames were copied through pinned memory and
        resized on the device; the CPU never holds a float copy); elsewhere it is on the CPU.
        """
        dev = self.resolved_device()
        return self._preprocess(pixels, device=dev if dev.startswith("cuda") else None)

    def encode(self, x) -> tuple[Any, Any]:
        """[N, 3, S_h, S_w] -> (cls [N, D] float32, patches [N, Hp, Wp, D] float32), on CPU.

        ``cls`` is the CLS token, or the patch mean for towers without one (SigLIP)."""
        cls, patches = self.encode_on_device(x)
        return cls.cpu(), patches.cpu()

    def encode_on_device(self, x) -> tuple[Any, Any]:
        """``encode``'s outputs, left on the encoder's device (frame-features pools them there)."""
        import torch

        model = self.load()
        with torch.inference_mode(), self.autocast():
            h = run_tower(model, x.to(self.resolved_device(), non_blocking=True), self.s.layer)
        return self._layout.split(h.float(), x.shape[-2] // self._patch, x.shape[-1] // self._patch)
