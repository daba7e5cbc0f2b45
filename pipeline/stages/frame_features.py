"""``frame-features``: a frozen image encoder (DINOv3 by default) over each episode's sampled frames.

Each distinct frame is encoded once per run (``dedup_frames``). NaVILA samples are histories: the
samples of one episode share most of their 8 frames, and every front-padding frame is the same
black image, so encoding per sample row repeats the encoder 2.5x on the demo and far more on R2R.
``prepare`` keys every row by the content hash of its decoded pixels (what ``preprocess`` turns
into the encoder input, so equal keys mean equal inputs, whatever the source, file or frame
index); ``compute`` encodes the rows whose key it has not seen, then gives every sample its rows
from those results or from ``FrameMemo`` (features of frames encoded in earlier batches, bounded
in bytes; samples come in id order, so a frame's reuses are close together). The cache layout and
``open_cache`` are unchanged: each sample still gets its own rows, equal to a non-deduplicated
run's. Chosen over a frame table plus per-sample references because readers, specs and every
head stay as they are; the cost left is disk (rows stored per sample). Decoding is deduplicated by
the source (NaVILA: ``decode.DecodedFrames``); preprocessing still runs per sample.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, Mapping

import numpy as np

from navcache.cache_specs.specs import get_spec
from navcache.cache_specs.specs.frame_features import SPEC_WITH_PATCHES

from ..encoders.base import BatchSizer, torch_threads
from ..encoders.hf_vision import EncoderSettings, HFVisionEncoder
from ..encoders.prismatic import PrismaticEncoder, PrismaticSettings
from .base import Prepared, Stage


@dataclass(frozen=True)
class FrameFeaturesSettings:
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    #: "hf": one transformers tower (``encoder``); "prismatic": OpenVLA's fused DINOv2 + SigLIP tower (``prismatic``)
    tower: Literal["hf", "prismatic"] = "hf"
    prismatic: PrismaticSettings = field(default_factory=PrismaticSettings)
    #: patch tokens are average-pooled to a pool_grid x pool_grid grid
    pool_grid: int = 2
    #: also keep the full patch grid (fp16; large)
    store_patch_tokens: bool = False
    #: frames per encoder forward (batches span episodes); "auto": the largest that fits,
    #: starting at max_batch_size and halving on out-of-memory (remembered for the run)
    batch_size: int | Literal["auto"] = 32
    #: where "auto" starts, and the frames gathered per encoder call with "auto"
    max_batch_size: int = 256
    #: "source": the source's own sampling (NaVILA's 8 frames, a clip's frames);
    #: "keyframes": only the frames the ``keyframes`` stage chose (its cache is an upstream)
    frames_from: Literal["source", "keyframes"] = "source"
    #: encode each distinct frame once per run (equal outputs; speed only, not in fingerprints)
    dedup_frames: bool = True
    #: bytes of encoded frames kept for reuse by later batches (MiB)
    frame_memo_mb: int = 512

    def __post_init__(self):
        if self.tower not in ("hf", "prismatic"):
            raise ValueError(f"tower must be 'hf' or 'prismatic', got {self.tower!r}")
        if self.frames_from not in ("source", "keyframes"):
            raise ValueError(f"frames_from must be 'source' or 'keyframes', got {self.frames_from!r}")
        if self.pool_grid < 1:
            raise ValueError(f"pool_grid must be >= 1, got {self.pool_grid}")
        if self.batch_size != "auto" and self.batch_size < 1:
            raise ValueError(f"batch_size must be 'auto' or >= 1, got {self.batch_size}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.frame_memo_mb < 0:
            raise ValueError(f"frame_memo_mb must be >= 0, got {self.frame_memo_mb}")


def frame_keys(pixels: np.ndarray) -> list[bytes]:
    """uint8 [T, H, W, 3] -> one content key per frame (shape + sha1 of the pixels; ~0.1 ms for 224 px)."""
    return [hashlib.sha1(np.ascontiguousarray(f).data, usedforsecurity=False).digest() + repr(f.shape).encode() for f in pixels]


class FrameMemo:
    """Encoded frames by key, least recently used dropped first beyond ``max_bytes``.

    A run's memory must not grow with the dataset: 1M DINOv3-B frames would be ~8 GB of
    features. Hand-rolled on OrderedDict (a dozen lines): ``functools.lru_cache`` bounds entries,
    not bytes, and cannot be filled from a batch."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self._d: OrderedDict[bytes, tuple[np.ndarray, ...]] = OrderedDict()

    def __contains__(self, key: bytes) -> bool:
        """Held now (no LRU touch: ``collate`` asks from the feeding thread while ``compute`` fills
        the memo on the device thread; a single dict lookup, atomic under the GIL)."""
        return key in self._d

    def get(self, key: bytes) -> tuple[np.ndarray, ...] | None:
        hit = self._d.get(key)
        if hit is not None:
            self._d.move_to_end(key)
        return hit

    def put(self, key: bytes, rows: tuple[np.ndarray, ...]) -> None:
        if key in self._d:
            return
        self._d[key] = rows
        self.bytes += sum(r.nbytes for r in rows)
        while self.bytes > self.max_bytes and self._d:
            _, old = self._d.popitem(last=False)
            self.bytes -= sum(r.nbytes for r in old)


class FrameFeaturesStage(Stage):
    name = "frame-features"
    setup_ahead = True
    code_version = "1"
    # what is decoded is fixed by the files read (content-hashed) and the fields the source
    # declares for its frames; labels, instructions and poses do not change pixels
    uses = ("frames",)
    skip_file_suffixes = (".gt.npz",)  # ground-truth geometry sidecars: pixels never come from them
    Settings = FrameFeaturesSettings

    def __init__(self, settings, source, source_options):
        super().__init__(settings, source, source_options)
        self.encoder = PrismaticEncoder(settings.prismatic) if settings.tower == "prismatic" else HFVisionEncoder(settings.encoder)
        self.batches = BatchSizer(settings.batch_size, settings.max_batch_size)
        self.memo = FrameMemo(settings.frame_memo_mb << 20)
        #: frames passed to the encoder and sample rows served, this run (the redundancy removed)
        self.frames_encoded = 0
        self.rows_served = 0
        self._encoder_threads = 1  # the caller's torch threads, set by each ``compute``
        #: keys the last collated batch encodes (in flight while the next one is collated)
        self._collated: set[bytes] = set()

    @property
    def consumes(self) -> tuple[str, ...]:
        return ("keyframes",) if self.settings.frames_from == "keyframes" else ()

    def spec(self):
        return SPEC_WITH_PATCHES if self.settings.store_patch_tokens else get_spec("frame_features")

    def dims(self) -> dict[str, int]:
        d = {"D": self.encoder.hidden_size(), "G": self.settings.pool_grid}
        if self.settings.store_patch_tokens:
            size = self.encoder.processor_config().get("size", {})
            patch = self.encoder.patch_size()
            d.update(Hp=int(size.get("height", 224)) // patch, Wp=int(size.get("width", 224)) // patch)
        return d

    def identity(self) -> dict:
        s = self.settings
        # batch size and device change speed, not values: keep them out of the fingerprint
        ident = {"pool_grid": s.pool_grid, "store_patch_tokens": s.store_patch_tokens, "encoder": self.encoder.identity()}
        if s.frames_from != "source":  # keeps fingerprints of caches built before the option existed
            ident["frames_from"] = s.frames_from
        return ident

    def provenance(self) -> dict:
        return {"encoder": self.encoder.provenance()}

    def check(self, seen: dict | None = None) -> None:
        field_ = "prismatic" if self.settings.tower == "prismatic" else "encoder.model"
        self.encoder.check(f"stages.{self.name}.{field_}", seen)

    @property
    def batch_cost(self) -> int:
        s = self.settings
        return s.max_batch_size if s.batch_size == "auto" else s.batch_size

    def setup(self) -> None:
        self.encoder.load()

    @cached_property
    def resize_to(self) -> tuple[int, int]:
        """(width, height) ``encoder.preprocess`` resizes every frame to (the processor's ``size``):
        sources may decode huge JPEGs reduced towards it, so memory follows the model, not the file."""
        size = self.encoder.processor_config().get("size") or {}
        edge = size.get("shortest_edge", 224)
        return int(size.get("width", edge)), int(size.get("height", edge))

    def prepare(self, episode, upstream: Mapping) -> Prepared:
        # reduced decode (preprocess: fast; in the encoder identity); an encoder without the option decodes in full
        fit = {"fit": True} if getattr(self.encoder, "decode_fit", False) else {}
        if self.settings.frames_from == "keyframes":
            frames = self.source.read_frames(episode, upstream["keyframes"]["frame_index"].tolist(), resize_to=self.resize_to, **fit)
        else:
            frames = self.source.read_frames(episode, resize_to=self.resize_to, **fit)
        x = self.encoder.preprocess(frames.pixels)
        keys = frame_keys(frames.pixels) if self.settings.dedup_frames else None
        return Prepared(episode.episode_id, (x, frames.indices.astype(np.int64), frames.padded.astype(bool), keys), cost=len(x))

    def collate(self, items: list[Prepared]):
        """The batch's input, built on the feeding thread while the device thread computes the
        batch before (single-threaded: see ``compute``). Without dedup: every frame [F, 3, S_h, S_w].
        With dedup: (keys, frames [U, 3, S_h, S_w]) of the distinct frames neither in the memo nor
        among those the batch before encodes (still in flight); ``compute`` takes the others from
        the memo, and encodes itself any that is not there after all (evicted meanwhile, or lost
        with a failed batch): the same rows either way."""
        import torch

        with torch_threads(1):
            if not self.settings.dedup_frames:
                return torch.cat([it.payload[0] for it in items])
            skip = self._collated if self.memo.max_bytes > 0 else set()
            new = self._new_frames(items, skip)
            self._collated = set(new)
            return list(new), self._stack(items, new)

    def compute(self, items: list[Prepared], collated=None) -> list[dict[str, np.ndarray]]:
        """Encode the batch's distinct frames not encoded before, then each item's rows:
        cls f16 [T, D], patch_pooled f16 [T, G, G, D] (+ patch_tokens f16 [T, Hp, Wp, D]).

        The glue around the encoder (concatenation, pooling, casts) runs single-threaded
        (``torch_threads``); the encoder itself on the caller's threads (``_encode``)."""
        with torch_threads(1) as self._encoder_threads:
            return self._compute(items, collated)

    def _compute(self, items: list[Prepared], collated=None) -> list[dict[str, np.ndarray]]:
        import torch

        if not self.settings.dedup_frames:
            x = torch.cat([it.payload[0] for it in items]) if collated is None else collated  # [F, 3, S_h, S_w]
            rows = self._encode_all(x)
            out, s = [], 0
            for it in items:
                out.append(self._arrays(it, [r[s : s + it.cost] for r in rows]))
                s += it.cost
            return out
        if collated is None:
            new = self._new_frames(items)
            collated = list(new), self._stack(items, new)
        have: dict[bytes, tuple[np.ndarray, ...]] = {}  # key -> its encoded rows (encoded here, or from the memo)
        self._encode_into(have, *collated)
        missing: dict[bytes, tuple[int, int]] = {}  # not collated and not in the memo after all
        for i, it in enumerate(items):
            for j, k in enumerate(it.payload[3]):
                if k not in have and k not in missing:
                    hit = self.memo.get(k)
                    if hit is None:
                        missing[k] = (i, j)
                    else:
                        have[k] = hit
        if missing:
            self._encode_into(have, list(missing), self._stack(items, missing))
        out = []
        for it in items:
            got = [have[k] for k in it.payload[3]]
            out.append(self._arrays(it, [np.stack([g[a] for g in got]) for a in range(len(got[0]))]))
        return out

    def _new_frames(self, items: list[Prepared], skip: set[bytes] = frozenset()) -> dict[bytes, tuple[int, int]]:
        """key -> (item, row) of its first occurrence, in order, for the frames of ``items`` neither
        in the memo nor in ``skip``."""
        new: dict[bytes, tuple[int, int]] = {}
        for i, it in enumerate(items):
            for j, k in enumerate(it.payload[3]):
                if k not in new and k not in skip and k not in self.memo:
                    new[k] = (i, j)
        return new

    @staticmethod
    def _stack(items: list[Prepared], where: dict[bytes, tuple[int, int]]):
        """The frames at ``where``'s (item, row) positions, [U, 3, S_h, S_w]; None when empty."""
        import torch

        return torch.stack([items[i].payload[0][j] for i, j in where.values()]) if where else None

    def _encode_into(self, have: dict, keys: list[bytes], x) -> None:
        """Encode ``x`` (the frames of ``keys``, in order) into ``have`` and the memo."""
        if not keys:
            return
        rows = self._encode_all(x)
        for u, k in enumerate(keys):
            have[k] = tuple(r[u].copy() for r in rows)  # copies: a memo entry must not pin the whole batch
            self.memo.put(k, have[k])

    def _encode_all(self, x) -> list[np.ndarray]:
        """[N, 3, S_h, S_w] -> [cls [N, D], pooled [N, G, G, D](, patches [N, Hp, Wp, D])], fp16 numpy."""
        import torch

        self.frames_encoded += len(x)
        key = (self.encoder.s.model, tuple(x.shape[1:]), self.encoder.resolved_device())
        chunks = self.batches.run(key, x, self._encode)
        rows = [torch.cat([c[0] for c in chunks]).numpy(), torch.cat([c[1] for c in chunks]).numpy()]
        if self.settings.store_patch_tokens:
            rows.append(torch.cat([c[2] for c in chunks]).numpy())
        return rows

    def _arrays(self, it: Prepared, rows: list[np.ndarray]) -> dict[str, np.ndarray]:
        self.rows_served += it.cost
        arrays = {"cls": rows[0], "patch_pooled": rows[1], "frame_index": it.payload[1], "padded": it.payload[2]}
        if self.settings.store_patch_tokens:
            arrays["patch_tokens"] = rows[2]
        return arrays

    def _encode(self, x):
        """One forward: [n, 3, S_h, S_w] -> fp16 on CPU (cls [n, D], pooled [n, G, G, D], patches [n, Hp, Wp, D] or None).

        Pooled and cast where the encoder ran: from a GPU only the fp16 pooled grid crosses to the
        host, not the fp32 patch grid (ViT-L at 224 px: 1 MiB instead of 32 MiB a 32-frame batch,
        and 2.2 ms of single-threaded CPU pooling per batch saved on the device thread)."""
        import torch.nn.functional as F

        with torch_threads(self._encoder_threads):
            cls, patches = self.encoder.encode_on_device(x)
        pooled = F.adaptive_avg_pool2d(patches.permute(0, 3, 1, 2), self.settings.pool_grid).permute(0, 2, 3, 1)
        kept = patches.half().cpu() if self.settings.store_patch_tokens else None
        return cls.half().cpu(), pooled.half().cpu(), kept
