"""What every frozen encoder shares: device, autocast precision, lazy loading, identity, provenance.

``FrozenEncoder`` holds one frozen settings dataclass (``self.s``) and the model, loaded once and
thread-safely on first use, so planning and ``status`` never touch the weights. It resolves
"auto" device and precision the same way for every encoder:

    device     "auto" -> "cuda" when available, else "cpu"
    precision  "auto" -> bf16 autocast on CUDA capability >= 8 (Ampere+), fp16 on older CUDA,
               fp32 (autocast off) elsewhere

and gives the weights' content fingerprint and the ``random_init`` provenance label
(``weights.py``).

Adding an encoder (a SigLIP/DINOv2 tower for OpenVLA, MapAnything, LLaVA-3D...):

1. Settings: a ``@dataclass(frozen=True)`` with at least ``model`` (hub id or local folder),
   ``device`` and a precision field (``precision`` by default; set ``precision_field`` on the
   encoder class if the config calls it otherwise, as VGGT's ``dtype``); add ``revision`` if the
   weights come from the hub by revision. Call ``check_device`` / ``check_precision`` in
   ``__post_init__`` so that a bad value names its field.
2. Subclass ``FrozenEncoder`` and implement ``_load_model()`` (return the ``torch.nn.Module``;
   the base puts it in eval mode, freezes it and moves it to the device) and
   ``output_identity()`` (everything besides model id, weights and precision that changes the
   outputs: preprocessing constants, which layers are kept, pooling). Override ``architecture()``
   for the provenance, and ``_on_loaded(model)`` to read constants off the loaded model.
3. Run the forward pass under ``with torch.inference_mode(), self.autocast():``.

Only ``torch`` is imported lazily, so importing an encoder module stays cheap.
"""
from __future__ import annotations

import abc
import glob
import os
import re
import sys
import threading
import traceback
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Callable, ClassVar, Hashable, TypeVar

from .weights import check_model, read_provenance, weights_fingerprint

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(value: object, field: str = "device") -> None:
    """ValueError naming ``field`` unless ``value`` is auto, cpu, mps, cuda or cuda:N."""
    if not isinstance(value, str) or not _DEVICE_RE.match(value):
        raise ValueError(f"{field} must be auto, cpu, mps, cuda or cuda:N, got {value!r}")


def check_precision(value: object, field: str = "precision") -> None:
    """ValueError naming ``field`` unless ``value`` is one of ``PRECISIONS``."""
    if value not in PRECISIONS:
        raise ValueError(f"{field} must be one of {', '.join(PRECISIONS)}, got {value!r}")


def resolve_device(device: str) -> str:
    """``device`` with "auto" made concrete: "cuda" when torch sees a device, else "cpu".

    Planning needs the answer (it decides the "auto" precision, which enters fingerprints) and
    must not import torch for it (seconds per ``status``): a machine with no GPU device node is
    answered "cpu" without asking torch (``no_gpu_device_nodes``). Planning and compute call this
    same function, so the device an encoder runs on is always the one its fingerprint names.
    """
    if device != "auto":
        return device
    if no_gpu_device_nodes():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def no_gpu_device_nodes() -> bool:
    """True where no torch build can see a CUDA/ROCm device: macOS (no CUDA builds), or Linux
    without the device nodes a GPU is reached through (NVIDIA's /dev/nvidiaN, ROCm's /dev/kfd,
    WSL2's /dev/dxg). False means "ask torch" (it may still say cpu). A GPU reached some other
    way would be missed: ``device: cuda`` in the settings says so explicitly."""
    if sys.platform == "darwin":
        return True
    if not sys.platform.startswith("linux"):
        return False
    return not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd") or os.path.exists("/dev/dxg"))


def resolve_precision(precision: str, device: str) -> str:
    """``precision`` with "auto" made concrete for the resolved ``device``."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        import torch  # only here: a CPU answer must not import torch (planning, ``status``)

        return "bf16" if torch.cuda.get_device_capability(torch.device(device))[0] >= 8 else "fp16"
    return "fp32"


@contextmanager
def torch_threads(n: int):
    """Run the calling thread's torch CPU ops on ``n`` intra-op threads inside the block.

    For the glue around an encoder call (batch concatenation, pooling, fp16 casts): on 2 cores an
    OpenMP team for a 20 MB copy keeps a second thread spinning after every region (issue 17: the
    main thread's team burnt ~0.8 s of CPU per 1,536 frames, a third of a core the decode threads
    needed), and one thread copies as fast. Only the calling thread's count changes (OpenMP's is
    per thread); the previous count comes back on exit.
    """
    import torch

    keep = torch.get_num_threads()
    if keep == n:
        yield keep
        return
    torch.set_num_threads(n)
    try:
        yield keep
    finally:
        torch.set_num_threads(keep)


def free_cuda_cache() -> None:
    """Hand cached CUDA blocks back so that the caller (or the next, smaller input) can use them."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def oom_error_type() -> type[BaseException]:
    import torch

    # torch >= 2.5 exposes torch.OutOfMemoryError; it is the same class as torch.cuda's
    return getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


_NEEDED_RE = re.compile(r"Tried to allocate ([\d.]+ ?[KMGTP]?i?B)")


def memory_needed(err: BaseException) -> str | None:
    """The allocation a CUDA out-of-memory error reports ("2.00 GiB"), or None when it says none
    (torch's message: "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has ...")."""
    m = _NEEDED_RE.search(str(err))
    return m.group(1) if m else None


def drop_failed_frames(err: BaseException) -> None:
    """Release what a failed forward pass still holds, then the CUDA cache: the activations are
    referenced from the traceback's frames, and the cache cannot return memory they hold."""
    traceback.clear_frames(err.__traceback__)
    free_cuda_cache()


T = TypeVar("T")


class BatchSizer:
    """Encoder batches as large as fit: ``size`` fixed, or ``"auto"``, which starts at
    ``max_size`` and halves on out-of-memory until a batch fits, remembering the size per key
    ((model, input shape, device)) for as long as this object lives (one run of one process).

    Hand-rolled rather than a library: the only maintained one (HF accelerate's
    ``find_executable_batch_size``) restarts a whole function, whereas here a failed chunk must
    be retried in place so that its rows are neither lost nor computed twice.
    """

    def __init__(self, size: int | str, max_size: int = 256):
        if size != "auto" and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"batch size must be 'auto' or an integer >= 1, got {size!r}")
        self.size, self.max_size = size, max_size
        self._fits: dict[Hashable, int] = {}
        #: (key, size) of every batch that ran out of memory, in order (what was tried)
        self.failed: list[tuple[Hashable, int]] = []

    def current(self, key: Hashable) -> int:
        return self.size if self.size != "auto" else self._fits.get(key, self.max_size)

    def known(self) -> dict[Hashable, int]:
        """Sizes settled so far, per key."""
        return dict(self._fits)

    def run(self, key: Hashable, x, fn: Callable[[Any], T]) -> list[T]:
        """``fn`` over consecutive chunks of ``x`` [N, ...] (each row in exactly one successful
        call, in order); with "auto", a chunk that raises out-of-memory is retried at half the
        size. A fixed size, or one row not fitting, lets the error through."""
        oom = oom_error_type()
        out, i = [], 0
        while i < len(x):
            bs = self.current(key)
            chunk = x[i : i + bs]
            try:
                out.append(fn(chunk))
            except oom as e:
                if self.size != "auto" or len(chunk) == 1:
                    raise
                err = e
            else:
                if self.size == "auto" and len(chunk) == bs:
                    self._fits.setdefault(key, bs)  # known to fit (a shorter tail proves nothing)
                i += len(chunk)
                continue
            drop_failed_frames(err)
            del err
            self.failed.append((key, len(chunk)))
            self._fits[key] = len(chunk) // 2
        return out


class FrozenEncoder(abc.ABC):
    """A frozen pretrained model behind one settings dataclass ``s``; see the module docstring."""

    #: name of the settings field holding "auto" | "fp32" | "bf16" | "fp16" (also its identity key)
    precision_field: ClassVar[str] = "precision"

    def __init__(self, settings: Any):
        self.s = settings
        self._model = None
        self._lock = threading.Lock()

    # -- subclass contract ----------------------------------------------------------------------
    @abc.abstractmethod
    def _load_model(self):
        """Build the model from ``self.s`` (weights on CPU); raise NavcacheError if impossible."""

    @abc.abstractmethod
    def output_identity(self) -> dict:
        """What else changes the outputs (preprocessing, kept layers, pooling); JSON-ready."""

    def architecture(self) -> str:
        """Architecture named in the provenance (a config or model class name)."""
        return type(self).__name__

    def _on_loaded(self, model) -> None:
        """Read constants off the loaded model (runs under the load lock, before it is published)."""

    # -- cheap metadata -------------------------------------------------------------------------
    @property
    def revision(self) -> str | None:
        return getattr(self.s, "revision", None)

    def resolved_device(self) -> str:
        return resolve_device(self.s.device)

    def resolved_precision(self) -> str:
        return resolve_precision(getattr(self.s, self.precision_field), self.resolved_device())

    def weights_fingerprint(self) -> str:
        return weights_fingerprint(self.s.model, self.revision)

    def identity(self) -> dict:
        """Everything about the encoder that changes its outputs (enters part fingerprints)."""
        ident = {"model": self.s.model, "weights": self.weights_fingerprint(), self.precision_field: self.resolved_precision()}
        if hasattr(self.s, "revision"):
            ident["revision"] = self.s.revision
        return {**ident, **self.output_identity()}

    def provenance(self) -> dict:
        """Where the weights come from, with ``random_init`` True for navcache's random models."""
        prov: dict[str, Any] = {"id": self.s.model}
        if hasattr(self.s, "revision"):
            prov["revision"] = self.s.revision
        return {**prov, "architecture": self.architecture(), **read_provenance(self.s.model, self.revision)}

    @property
    def random_init(self) -> bool:
        return bool(read_provenance(self.s.model, self.revision).get("random_init", False))

    def check(self, field: str, seen: dict | None = None) -> str:
        """Fail fast (NavcacheError naming ``field``, the settings path of ``model``) unless the
        weights are a local folder, in the local hub cache, or reachable; see ``check_model``.
        Returns where they load from. Never loads them."""
        return check_model(self.s.model, self.revision, field, seen)

    # -- heavy path -----------------------------------------------------------------------------
    def load(self):
        """The model in eval mode, without gradients, on ``resolved_device()``; loaded once."""
        with self._lock:
            if self._model is None:
                model = self._load_model().eval().requires_grad_(False).to(self.resolved_device())
                self._on_loaded(model)
                self._model = model
        return self._model

    def autocast_dtype(self):
        """torch dtype of autocast, or None for fp32 (autocast off)."""
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.resolved_precision())

    def autocast(self) -> AbstractContextManager:
        """``torch.autocast`` for the resolved device and precision (disabled for fp32)."""
        import torch

        amp = self.autocast_dtype()
        return torch.autocast(device_type=torch.device(self.resolved_device()).type, dtype=amp or torch.float32, enabled=amp is not None)
