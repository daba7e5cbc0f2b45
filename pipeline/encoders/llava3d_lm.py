"""The full LLaVA-3D language model (ZCMax/LLaVA-3D) as a frozen, text-conditioned encoder, run in
an isolated worker process (``llava3d_worker.py``, protocol there; ``llava3d_client.py``).

LLaVA-3D's ``llava`` package pins transformers 4.37.2; navcache never pins its own transformers to
that. The package runs under ``lm_python``, the interpreter of a venv that has LLaVA-3D's
dependencies, with ``lm_source`` (a checkout of ZCMax/LLaVA-3D) on its path; this side only
starts it, talks JSON lines and .npy files, and reduces what it returns.

Read from LLaVA-3D's source (nothing copied; docs/llava3d_lm.md has the details and what a tiny
random-init instance of the real class did):

- ``llava.model.builder.load_pretrained_model(path, None, name, torch_dtype, device_map, device)``
  builds ``LlavaLlamaForCausalLM`` (``llava/model/language_model/llava_llama.py``) from a folder
  whose name contains "llava", loads the CLIP tower named by the config's ``mm_vision_tower``
  and the RGB-D "video tower" (learned 3-D position MLP, 0.2 m voxel pooling, ``torch_scatter``).
- ``forward(input_ids, images [B, V, 3, S, S], depths [B, V, S, S], poses [B, V, 4, 4],
  intrinsics [B, V, 4, 4], output_hidden_states=True)``: the single ``IMAGE_TOKEN_INDEX`` (-200)
  position of the prompt is replaced by the projected voxel tokens; the prompt is the
  ``llava_v1`` conversation with ``"<image>\\n" + text`` as the user turn.

What is cached (``reduce_tokens``): the last layer's hidden states (``hidden_states[-1]``, after
the final norm) cut to ``token_budget`` positions, by ``reduce``:

    last  the final K positions: the task text and the assistant cue. With LLaVA's prompt order
          (3-D tokens, then the text) and causal attention, only these positions have seen both
          the scene and the task, i.e. they are the text-conditioned spatial embeddings.
    pool  the whole sequence average-pooled into K contiguous segments (torch's adaptive 1-D
          average pooling: segment i spans floor(i L / K) .. ceil((i + 1) L / K)).

A sequence shorter than K is kept whole, zero-padded, ``valid`` marking the real positions.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import ConfigError, NavcacheError
from .base import check_device, check_precision, resolve_device, resolve_precision
from .weights import check_model, local_model_dir, read_provenance, weights_fingerprint

REDUCE = ("last", "pool")
_NAME_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_]\w*$")
#: backends run without ``allow_custom_code`` ("module:*" = any name of it)
ALLOWED = ("llava3d", "tests.standins.llava3d_lm_standin:*", "navcache.tests.standins.llava3d_lm_standin:*")


def _allowed(name: str) -> bool:
    return name in ALLOWED or f"{name.partition(':')[0]}:*" in ALLOWED


@dataclass(frozen=True)
class Llava3DLMSettings:
    #: LLaVA-3D checkpoint folder (its name must contain "llava", LLaVA's loader rule) or hub id
    model: str = "ChaimZhu/LLaVA-3D-7B"
    #: interpreter of the venv holding LLaVA-3D's dependencies (transformers 4.37.2), e.g. /opt/llava3d/bin/python
    lm_python: str = ""
    #: checkout of ZCMax/LLaVA-3D put first on the worker's sys.path ("" = the package is installed there)
    lm_source: str = ""
    #: "llava3d" (LLaVA-3D's own loader and forward) or "module:name" of a backend class in the worker's venv
    backend: str = "llava3d"
    #: run a ``backend`` outside ``ALLOWED`` (importing it runs its code)
    allow_custom_code: bool = False
    device: str = "auto"
    #: the model's torch_dtype in the worker; "auto" = bf16 on CUDA capability >= 8, fp16 on older CUDA, fp32 on CPU
    precision: str = "auto"
    #: LLaVA conversation template (``llava.conversation.conv_templates``)
    conv_mode: str = "llava_v1"
    #: the user turn after the 3-D tokens; ``{task}`` is the episode's task text
    prompt: str = "{task}"
    #: fixed task text for every episode; "" = each episode's own (the source's ``task`` label)
    task: str = ""
    #: positions kept per frame (K) and how (module docstring)
    token_budget: int = 64
    reduce: Literal["last", "pool"] = "last"
    #: seconds for the worker to load the model, and per frame of a request, before it is killed
    start_timeout_s: float = 600.0
    timeout_s: float = 120.0

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model must be a non-empty checkpoint folder or hub id, got {self.model!r}")
        if self.backend != "llava3d" and not _NAME_RE.match(self.backend):
            raise ValueError(f"backend must be 'llava3d' or look like 'package.module:Class', got {self.backend!r}")
        if not self.allow_custom_code and not _allowed(self.backend):
            raise ValueError(f"backend {self.backend!r} is not allowed (allowed: {', '.join(ALLOWED)}); the worker would "
                             "run its code: set allow_custom_code: true beside it if you trust it")
        check_device(self.device)
        check_precision(self.precision)
        if "{task}" not in self.prompt:
            raise ValueError(f"prompt must contain {{task}} (where the task text goes), got {self.prompt!r}")
        v = self.token_budget
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"token_budget must be an integer >= 1, got {v!r}")
        if self.reduce not in REDUCE:
            raise ValueError(f"reduce must be one of {', '.join(REDUCE)}, got {self.reduce!r}")
        for name in ("start_timeout_s", "timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")


def reduce_tokens(hidden: np.ndarray, budget: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """hidden [L, D] -> (float32 [budget, D], valid bool [budget]); see the module docstring."""
    h = np.asarray(hidden, np.float32)
    n = h.shape[0]
    out = np.zeros((budget, h.shape[1]), np.float32)
    valid = np.zeros(budget, bool)
    if n <= budget:
        out[:n], valid[:n] = h, True
    elif mode == "last":
        out[:], valid[:] = h[n - budget:], True
    elif mode == "pool":
        for i in range(budget):
            out[i] = h[(i * n) // budget: math.ceil((i + 1) * n / budget)].mean(0)
        valid[:] = True
    else:
        raise ValueError(f"reduce must be one of {', '.join(REDUCE)}, got {mode!r}")
    return out, valid


class Llava3DLanguageModel:
    """Identity, checks and worker options for one ``Llava3DLMSettings``; ``field`` is the
    settings' path in the project file (error messages name it)."""

    def __init__(self, settings: Llava3DLMSettings, field: str):
        self.s, self.field = settings, field

    def config(self) -> dict:
        """The checkpoint's config.json (read at planning: D and the vision tower come from it)."""
        d = local_model_dir(self.s.model)
        path = d / "config.json" if d is not None else None
        if path is None or not path.is_file():
            raise ConfigError(f"{self.field}.model: {self.s.model!r} has no config.json on disk; download the checkpoint "
                              "first (huggingface-cli download) or give its folder")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{self.field}.model: {path} cannot be read: {e}") from None

    def hidden_size(self) -> int:
        return int(self.config()["hidden_size"])

    def vision_tower(self) -> str:
        return str(self.config().get("mm_vision_tower") or "")

    def device(self) -> str:
        return resolve_device(self.s.device)

    def precision(self) -> str:
        return resolve_precision(self.s.precision, self.device())

    def identity(self) -> dict:
        s, tower = self.s, self.vision_tower()
        return {"model": s.model, "weights": weights_fingerprint(s.model), "config_class": self.config().get("architectures"),
                "vision_tower": {"model": tower, "weights": weights_fingerprint(tower) if tower else None},
                "backend": s.backend, "precision": self.precision(), "conv_mode": s.conv_mode, "prompt": s.prompt,
                "task": s.task, "token_budget": s.token_budget, "reduce": s.reduce, "hidden_states": "last layer"}

    @property
    def random_init(self) -> bool:
        return bool(read_provenance(self.s.model).get("random_init", False))

    def provenance(self, worker_info: dict | None) -> dict:
        return {"id": self.s.model, "backend": self.s.backend, "lm_python": self.s.lm_python, "lm_source": self.s.lm_source,
                "vision_tower": self.vision_tower(), "worker": worker_info, **read_provenance(self.s.model)}

    def check(self, seen: dict | None = None) -> None:
        """Interpreter, source folder and checkpoint present (ConfigError / NavcacheError naming
        the field). Cheap: starts no worker."""
        py = os.path.expanduser(self.s.lm_python)
        if not py:
            raise ConfigError(f"{self.field}.lm_python: not set; give the python of a venv with LLaVA-3D's dependencies "
                              "(transformers 4.37.2; docs/llava3d_lm.md)")
        if not (os.path.isfile(py) and os.access(py, os.X_OK)):
            raise ConfigError(f"{self.field}.lm_python: {self.s.lm_python!r} is not an executable file; give the python "
                              "of a venv with LLaVA-3D's dependencies (docs/llava3d_lm.md)")
        if self.s.lm_source and not os.path.isdir(os.path.expanduser(self.s.lm_source)):
            raise ConfigError(f"{self.field}.lm_source: {self.s.lm_source!r} is not a folder (a checkout of ZCMax/LLaVA-3D)")
        check_model(self.s.model, None, f"{self.field}.model", seen)
        self.config()

    def worker_args(self) -> list[str]:
        s = self.s
        return ["--backend", s.backend, "--source", os.path.expanduser(s.lm_source), "--model", s.model, "--device", self.device(),
                "--dtype", self.precision(), "--conv-mode", s.conv_mode]

    def python(self) -> str:
        return os.path.expanduser(self.s.lm_python)


def check_info(info: dict, hidden_size: int) -> int:
    """The hello's crop size S, after checking that the worker's model has the planned width D."""
    if int(info.get("hidden_size", -1)) != hidden_size:
        raise NavcacheError(f"the worker's model has hidden size {info.get('hidden_size')}, its config.json says {hidden_size}")
    return int(info["crop_size"])
