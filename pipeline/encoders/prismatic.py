"""The fused DINOv2 + SigLIP vision tower of Prismatic / OpenVLA (``dinosiglip-vit-so-224px``).

What OpenVLA computes for an image (confirmed in openvla/openvla
``prismatic/models/backbones/vision/dinosiglip_vit.py``, ``base_vision.py`` and
``prismatic/extern/hf/processing_prismatic.py``; its released checkpoints use
``image_resize_strategy: resize-naive``, ``interpolations: [bicubic, bicubic]``, 224 px):

1. Preprocessing, once per tower: resize the whole frame to 224 x 224 (no crop, aspect not kept)
   with PIL bicubic, ``to_tensor`` (/255), normalise with the tower's mean/std: DINOv2 ImageNet
   (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225), SigLIP 0.5 / 0.5. Both towers resize the same
   way, so the frame is resized once and normalised twice; the result is OpenVLA's channel-stacked
   ``pixel_values`` [N, 6, 224, 224] (DINO channels first).
2. Each tower's output of its second-to-last block (timm ``get_intermediate_layers(n={depth - 2})``,
   no final norm), prefix tokens dropped: DINOv2-reg's CLS + 4 registers, SigLIP has none.
3. Patch features concatenated per patch: [N, 256, 1024 + 1152 = 2176].

Both towers load through transformers (``Dinov2WithRegistersModel``, ``SiglipVisionModel``) from hub
ids or folders, or, with ``openvla_checkpoint``, get OpenVLA's fine-tuned tensors from its
checkpoint folder (``openvla_weights``; the tower ids then give the architecture configs only).
OpenVLA pinned timm 0.9.10, whose SigLIP MLP uses exact GELU (``nn.GELU``), not the tanh
approximation of SigLIP's own config: ``siglip_hidden_act`` ("gelu") reproduces OpenVLA's forward.

``frame_features`` rows: ``patch_pooled`` [G, G, 2176] and optional ``patch_tokens`` [16, 16, 2176]
are the fused patches; ``cls`` [2176] is DINO's CLS token at the same layer followed by the mean
of SigLIP's patch tokens (SigLIP has no CLS; Prismatic itself reads patches only).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NavcacheError
from ..fingerprint import hash_obj
from .base import FrozenEncoder, check_device, check_precision
from .towers import TokenLayout, check_layer, load_tower, run_tower, truncate_for_layer, vision_config
from .weights import PROVENANCE_FILE, check_model, read_provenance, weights_fingerprint

RESIZES = ("resize-naive",)
#: OpenVLA's normalisation per tower (timm data configs of its two towers)
DINO_MEAN, DINO_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class PrismaticSettings:
    #: DINOv2 with registers (ViT-L/14 in OpenVLA): hub id or folder (architecture config only with openvla_checkpoint)
    dino: str = "facebook/dinov2-with-registers-large"
    #: SigLIP so400m/14 at 224 px: hub id or folder
    siglip: str = "google/siglip-so400m-patch14-224"
    dino_revision: str | None = None
    siglip_revision: str | None = None
    #: an OpenVLA checkpoint folder (safetensors shards): its fine-tuned tower tensors replace the towers' own
    openvla_checkpoint: str | None = None
    image_size: int = 224
    #: Prismatic image_resize_strategy; OpenVLA's released models use "resize-naive"
    resize: str = "resize-naive"
    #: hidden_states index read in both towers (-2: the second-to-last block, as Prismatic)
    layer: int = -2
    #: SigLIP MLP activation: "gelu" (exact) as OpenVLA's timm 0.9.10 ran it; None: the config's own
    siglip_hidden_act: str | None = "gelu"
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self):
        check_device(self.device)
        check_precision(self.precision)
        check_layer(self.layer)
        if self.layer == "last":
            raise ValueError("layer must be an integer index into hidden_states for the fused tower (-2 = Prismatic's)")
        if self.resize not in RESIZES:
            raise ValueError(f"resize must be one of {', '.join(RESIZES)}, got {self.resize!r}")
        if self.image_size < 14:
            raise ValueError(f"image_size must be >= 14, got {self.image_size}")

    @property
    def model(self) -> str:
        """One name for both towers (batch-size memo key, messages)."""
        return f"prismatic:{self.dino}+{self.siglip}" + (f"@{self.openvla_checkpoint}" if self.openvla_checkpoint else "")


class ResizeNaive:
    """uint8 [N, H, W, 3] -> float32 [N, 6, S, S]: OpenVLA's resize-naive preprocessing of both towers.

    PIL's bicubic resize is what torchvision's ``Resize`` calls on the PIL images OpenVLA's
    processor receives, so calling PIL here gives its pixels without torchvision; ``/255`` then
    ``(x - mean) / std`` are the ops of ``to_tensor`` and ``normalize``."""

    def __init__(self, size: int):
        import torch

        self.size = size
        self.mean = torch.tensor(DINO_MEAN + SIGLIP_MEAN, dtype=torch.float32).view(1, 6, 1, 1)
        self.std = torch.tensor(DINO_STD + SIGLIP_STD, dtype=torch.float32).view(1, 6, 1, 1)

    def resize_u8(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] -> uint8 [N, S, S, 3] (PIL bicubic; frames already S x S are kept)."""
        from PIL import Image

        s = self.size
        if pixels.ndim != 4 or pixels.shape[-1] != 3 or pixels.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [N, H, W, 3] RGB, got {pixels.dtype} {pixels.shape}")
        if pixels.shape[1:3] == (s, s):
            return np.ascontiguousarray(pixels)
        return np.stack([np.asarray(Image.fromarray(f).resize((s, s), Image.BICUBIC)) for f in pixels])

    def __call__(self, pixels: np.ndarray, device: str | None = None):
        import torch

        u8 = torch.from_numpy(self.resize_u8(pixels))
        if device not in (None, "cpu"):
            u8 = u8.to(device)
        x = u8.permute(0, 3, 1, 2).float().div_(255.0)  # [N, 3, S, S]
        x = torch.cat([x, x], dim=1)  # one copy per tower, normalised in place
        return x.sub_(self.mean.to(x.device)).div_(self.std.to(x.device))


class PrismaticEncoder(FrozenEncoder):
    """Both towers as one encoder: ``preprocess`` -> [N, 6, S, S], ``encode`` -> (cls, fused patches)."""

    def __init__(self, settings: PrismaticSettings):
        super().__init__(settings)
        self._preprocess = ResizeNaive(settings.image_size)

    # -- cheap metadata -----------------------------------------------------------------------
    def _config(self, which: str):
        from transformers import AutoConfig

        model, rev = (self.s.dino, self.s.dino_revision) if which == "dino" else (self.s.siglip, self.s.siglip_revision)
        return vision_config(AutoConfig.from_pretrained(model, revision=rev))

    def facts(self) -> dict:
        from .weights import model_metadata

        def read(which):
            c = self._config(which)
            return {"class": type(c).__name__, "hidden_size": int(c.hidden_size), "patch_size": int(c.patch_size)}

        return {w: model_metadata(m, r, lambda w=w: read(w), {"vision": True})
                for w, m, r in (("dino", self.s.dino, self.s.dino_revision), ("siglip", self.s.siglip, self.s.siglip_revision))}

    def hidden_size(self) -> int:
        f = self.facts()
        return f["dino"]["hidden_size"] + f["siglip"]["hidden_size"]

    def patch_size(self) -> int:
        f = self.facts()
        if f["dino"]["patch_size"] != f["siglip"]["patch_size"]:
            raise NavcacheError(f"fused tower: patch sizes differ (dino {f['dino']['patch_size']}, siglip {f['siglip']['patch_size']}); patches cannot be concatenated")
        return f["dino"]["patch_size"]

    def processor_config(self) -> dict:
        """The input size, in the form the stage reads (``size``)."""
        return {"size": {"height": self.s.image_size, "width": self.s.image_size}}

    def architecture(self) -> str:
        f = self.facts()
        return f"{f['dino']['class']}+{f['siglip']['class']}"

    def weights_fingerprint(self) -> str:
        parts: dict[str, Any] = {"dino": weights_fingerprint(self.s.dino, self.s.dino_revision),
                                 "siglip": weights_fingerprint(self.s.siglip, self.s.siglip_revision)}
        if self.s.openvla_checkpoint:
            parts["openvla"] = _checkpoint_fingerprint(Path(self.s.openvla_checkpoint))
        return hash_obj(parts)

    def identity(self) -> dict:
        s = self.s
        return {"model": s.model, "weights": self.weights_fingerprint(), "precision": self.resolved_precision(),
                "revisions": [s.dino_revision, s.siglip_revision], **self.output_identity()}

    def output_identity(self) -> dict:
        s = self.s
        return {"class": self.architecture(), "image_size": s.image_size, "resize": s.resize, "layer": s.layer,
                "siglip_hidden_act": s.siglip_hidden_act, "normalise": {"dino": [DINO_MEAN, DINO_STD], "siglip": [SIGLIP_MEAN, SIGLIP_STD]},
                "cls": "dino CLS + siglip patch mean"}

    def provenance(self) -> dict:
        s = self.s
        prov = {"id": s.model, "architecture": self.architecture(),
                "dino": {"id": s.dino, "revision": s.dino_revision, **read_provenance(s.dino, s.dino_revision)},
                "siglip": {"id": s.siglip, "revision": s.siglip_revision, **read_provenance(s.siglip, s.siglip_revision)}}
        if s.openvla_checkpoint:
            prov["openvla_checkpoint"] = {"path": s.openvla_checkpoint, **_folder_provenance(Path(s.openvla_checkpoint))}
        prov["random_init"] = self.random_init
        return prov

    @property
    def random_init(self) -> bool:
        s = self.s
        if s.openvla_checkpoint:  # the towers' own weights are not used
            return bool(_folder_provenance(Path(s.openvla_checkpoint)).get("random_init", False))
        return any(read_provenance(m, r).get("random_init", False) for m, r in ((s.dino, s.dino_revision), (s.siglip, s.siglip_revision)))

    def check(self, field: str, seen: dict | None = None) -> str:
        """Both towers reachable and, if given, the checkpoint folder holds both towers (``field``: the settings path)."""
        check_model(self.s.dino, self.s.dino_revision, f"{field}.dino", seen)
        check_model(self.s.siglip, self.s.siglip_revision, f"{field}.siglip", seen)
        if self.s.openvla_checkpoint:
            from .openvla_weights import vision_shards

            try:
                vision_shards(Path(self.s.openvla_checkpoint))
            except (NavcacheError, OSError, KeyError, ValueError) as e:
                raise NavcacheError(f"{field}.openvla_checkpoint: {e}") from None
        self.patch_size()
        return "folder"

    # -- heavy path ---------------------------------------------------------------------------
    def _load_model(self):
        import torch

        return torch.nn.ModuleDict({"dino": self._load_tower("dino"), "siglip": self._load_tower("siglip")})

    def _load_tower(self, which: str):
        s = self.s
        model, rev = (s.dino, s.dino_revision) if which == "dino" else (s.siglip, s.siglip_revision)
        over: dict[str, Any] = {"image_size": s.image_size}
        if which == "siglip":
            over["vision_use_head"] = False  # the attention-pool head is never read
            if s.siglip_hidden_act:
                over["hidden_act"] = s.siglip_hidden_act
        if s.openvla_checkpoint:
            tower = self._from_checkpoint(which, model, rev, over)
        else:
            tower = load_tower(model, rev, config_overrides=over)
        truncate_for_layer(tower, s.layer)
        return tower

    def _from_checkpoint(self, which: str, model: str, rev: str | None, over: dict):
        import transformers

        from .openvla_weights import load_mapped, read_towers
        from .towers import tower_class

        if not hasattr(self, "_ckpt"):
            self._ckpt = read_towers(Path(self.s.openvla_checkpoint))
        cfg = self._config(which)
        for k, v in over.items():
            setattr(cfg, k, v)
        name, _ = tower_class(cfg, model)
        tower = getattr(transformers, name)(cfg)
        load_mapped(tower, which, self._ckpt.pop(which))
        return tower

    def _on_loaded(self, model) -> None:
        self._layouts = {w: TokenLayout(w == "dino", int(getattr(model[w].config, "num_register_tokens", 0) or 0)) for w in ("dino", "siglip")}
        self._patch = int(model["dino"].config.patch_size)

    def preprocess(self, pixels: np.ndarray):
        """uint8 [N, H, W, 3] RGB -> float32 [N, 6, S, S] (DINO then SigLIP channels), on the device
        when it is CUDA (resized on the CPU, normalised there), else on the CPU."""
        dev = self.resolved_device()
        return self._preprocess(pixels, device=dev if dev.startswith("cuda") else None)

    def encode(self, x) -> tuple[Any, Any]:
        """[N, 6, S, S] -> (cls [N, Dd + Ds] float32, patches [N, S/p, S/p, Dd + Ds] float32), on CPU."""
        cls, patches = self.encode_on_device(x)
        return cls.cpu(), patches.cpu()

    def encode_on_device(self, x) -> tuple[Any, Any]:
        """``encode``'s outputs, left on the encoder's device (frame-features pools them there)."""
        import torch

        model = self.load()
        x = x.to(self.resolved_device(), non_blocking=True)
        hp = wp = x.shape[-1] // self._patch
        out = []
        with torch.inference_mode(), self.autocast():
            for w, sl in (("dino", slice(0, 3)), ("siglip", slice(3, 6))):
                h = run_tower(model[w], x[:, sl], self.s.layer)
                out.append(self._layouts[w].split(h.float(), hp, wp))
        cls = torch.cat([out[0][0], out[1][0]], dim=-1)
        patches = torch.cat([out[0][1], out[1][1]], dim=-1)
        return cls, patches


def _checkpoint_fingerprint(folder: Path) -> str:
    """Content hash of the shards holding the vision tensors (the language model's shards are not read)."""
    from contextlib import closing

    from .openvla_weights import vision_shards
    from .weights import _memo_hasher

    files = sorted(vision_shards(folder))
    with closing(_memo_hasher()) as hasher:
        return hash_obj([(f, hasher(folder / f)) for f in files])


def _folder_provenance(folder: Path) -> dict:
    import json

    p = folder / PROVENANCE_FILE
    return json.loads(p.read_text()) if p.exists() else {"random_init": False}
