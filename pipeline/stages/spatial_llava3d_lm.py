"""``spatial-llava3d-lm``: the full LLaVA-3D model's text-conditioned hidden states per sampled
timestep (spec ``spatial_llava3d_lm``), through an isolated worker (``encoders/llava3d_lm.py``).

Per timestep the model sees the stage's cameras as one RGB-D "video" (LLaVA-3D's 3-D patch path)
and the prompt with the episode's task text. Depth + intrinsics + cam2world come from
``xyz_from`` exactly as for ``spatial-llava3d`` (``Llava3DGeometryStage``); here the depth map is
brought to LLaVA-3D's S x S crop (``llava3d_depth_view``, the same rule) before it goes to the
worker, which does the rest with LLaVA-3D's own code (RGB preprocessing, unprojection, voxels).

The task text enters the fingerprint: the episode's ``task`` label (a field of the source's
``labels`` use, so a changed task recomputes that episode) or the stage's fixed ``task``, and the
``prompt`` template, the model (checkpoint and vision-tower weights), the budget and reduction.

One worker per stage run (started in ``setup``, reused across episodes, ended in ``teardown``).
A worker that crashes or does not answer within ``timeout_s`` per frame quarantines the episode
it was encoding, with the reason and the tail of its log; the next episode starts a new one. An
error the worker reports for a request (the model raised) quarantines that episode only.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np

from navcache.cache_specs.specs import get_spec

from ..encoders.llava3d import XYZ_FROM, llava3d_depth_view
from ..encoders.llava3d_client import LMWorker, RequestFailed, WorkerFailed
from ..encoders.llava3d_lm import Llava3DLanguageModel, Llava3DLMSettings, check_info, reduce_tokens
from ..errors import ConfigError, NavcacheError, Quarantine
from ..sources.fields import declared_fields
from .base import Computed, Prepared
from .spatial import to_f16
from .spatial_llava3d import Llava3DGeometryStage


@dataclass(frozen=True)
class SpatialLlava3DLMSettings(Llava3DLMSettings):
    """The model and worker (``Llava3DLMSettings``) plus the views and where depth + pose come from."""

    #: camera keys of a timestep's views, in this order; empty = every camera of the source
    views: tuple[str, ...] = ()
    #: "mapanything" (the spatial stage's cache) or "gt" (the source's ground truth), as spatial-llava3d
    xyz_from: Literal["mapanything", "gt"] = "mapanything"

    def __post_init__(self):
        super().__post_init__()
        if len(set(self.views)) != len(self.views):
            raise ValueError(f"views must not repeat a camera, got {list(self.views)}")
        if self.xyz_from not in XYZ_FROM:
            raise ValueError(f"xyz_from must be one of {', '.join(XYZ_FROM)}, got {self.xyz_from!r}")


def _homogeneous_k(k: np.ndarray) -> np.ndarray:
    """[..., 3, 3] -> float32 [..., 4, 4]: LLaVA-3D keeps intrinsics as 4x4 matrices."""
    out = np.zeros(k.shape[:-2] + (4, 4), np.float32)
    out[..., :3, :3] = k
    out[..., 3, 3] = 1.0
    return out


class SpatialLlava3DLMStage(Llava3DGeometryStage):
    name = "spatial-llava3d-lm"
    code_version = "1"
    Settings = SpatialLlava3DLMSettings

    def __init__(self, settings, source, source_options):
        super().__init__(settings, source, source_options)
        self.lm = Llava3DLanguageModel(settings, self.field)
        if not settings.task:
            if "task" not in declared_fields(source, ("labels",)):
                raise ConfigError(f"{self.field}.task: source {getattr(source, 'kind', type(source).__name__)!r} has no task "
                                  "text per episode; set a fixed task text")
            self.uses = (*self.uses, "labels")  # the episode's task text enters its fingerprint
        self._worker: LMWorker | None = None
        self._crop: int | None = None

    # -- planning -----------------------------------------------------------------------------
    def spec(self):
        return get_spec("spatial_llava3d_lm")

    def dims(self) -> dict[str, int]:
        return {"V": len(self.view_names), "K": self.settings.token_budget, "D": self.lm.hidden_size()}

    def identity(self) -> dict:
        return {"views": list(self.view_names), "xyz_from": self.settings.xyz_from, "lm": self.lm.identity()}

    def provenance(self) -> dict:
        info = self._worker.info if self._worker is not None else None
        return {"spatial_llava3d_lm": {"views": list(self.view_names), "xyz_from": self.settings.xyz_from, "lm": self.lm.provenance(info)}}

    def check(self, seen: dict | None = None) -> None:
        self.lm.check(seen)

    # -- the worker -----------------------------------------------------------------------------
    def setup(self) -> None:
        if self._worker is None:
            self._worker = LMWorker(self.lm.python(), self.lm.worker_args(), self.settings.start_timeout_s)
            weakref.finalize(self, self._worker.close)  # a safety net where no teardown comes
        try:
            info = self._worker.start()
        except WorkerFailed as e:
            raise NavcacheError(f"{self.field}: {e}") from None
        self._crop = check_info(info, self.lm.hidden_size())

    def teardown(self) -> None:
        if self._worker is not None:
            self._worker.close()

    # -- per episode ----------------------------------------------------------------------------
    def _task(self, episode) -> tuple[str, int]:
        if self.settings.task:
            return self.settings.task, -1
        rec = self.record(episode)
        return str(rec["task"]), int(rec["task_index"])

    def prepare(self, episode, upstream: Mapping) -> Prepared:
        index, views, geo = self.read_geometry(episode, upstream)
        task, task_index = self._task(episode)
        t, v = geo["depth"].shape[:2]
        depth = np.zeros((t, v, self._crop, self._crop), np.float32)
        k = np.zeros((t, v, 3, 3))
        for i in range(t):
            for j in range(v):
                depth[i, j], k[i, j] = llava3d_depth_view(geo["depth"][i, j], geo["intrinsics"][i, j], self._crop)
        payload = {"index": index, "views": views, "depth": depth, "intrinsics": _homogeneous_k(k),
                   "pose": np.asarray(geo["cam2world"], np.float32), "task": task, "task_index": task_index}
        return Prepared(episode.episode_id, payload, cost=len(index))

    def compute(self, items: list[Prepared]) -> list[Computed]:
        return [self._episode(it.payload) for it in items]

    def _episode(self, p: dict) -> Computed:
        index, s = p["index"], self.settings
        text = s.prompt.replace("{task}", p["task"])
        where = f"frames {int(index[0])}..{int(index[-1])}"
        try:
            hidden, lengths, visual = self._worker.encode(text, p["views"], p["depth"], p["pose"], p["intrinsics"], s.timeout_s * len(index))
        except WorkerFailed as e:
            raise Quarantine(f"LLaVA-3D worker failed on {where}: {e}") from None
        except RequestFailed as e:
            raise Quarantine(f"LLaVA-3D failed on {where}: {e}") from None
        d = self.lm.hidden_size()
        if len(lengths) != len(index) or hidden.shape != (sum(lengths), d):
            raise Quarantine(f"LLaVA-3D worker returned hidden states {list(hidden.shape)} for lengths {lengths}; expected "
                             f"{len(index)} frames of width {d}")
        if not np.isfinite(hidden).all():
            raise Quarantine(f"LLaVA-3D returned NaN or infinite hidden states on {where}")
        starts = np.concatenate([[0], np.cumsum(lengths)])
        cut = [reduce_tokens(hidden[a:b], s.token_budget, s.reduce) for a, b in zip(starts[:-1], starts[1:])]
        arrays = {"frame_index": np.asarray(index, np.int64), "task_index": np.full(len(index), p["task_index"], np.int64),
                  "hidden": to_f16(np.stack([c[0] for c in cut])), "valid": np.stack([c[1] for c in cut]),
                  "tokens": np.asarray(lengths, np.int64), "visual_tokens": np.asarray(visual, np.int64)}
        return Computed(arrays, {"task": p["task"], "text": text})
