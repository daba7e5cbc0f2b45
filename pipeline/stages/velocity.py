"""``velocity``: planar velocities, OpenVLA's action, goal point and instruction of each sample
(``cache_specs/specs/velocity.py``). Needs a source whose records carry a robot-frame path
(``trajectory``, x forward / y left / z up) and a goal (the ``vamos`` source)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from navcache.cache_specs.specs import get_spec

from ..errors import ConfigError, Quarantine
from ..sources.fields import declared_fields
from .base import Prepared, Stage


@dataclass(frozen=True)
class VelocitySettings:
    #: H, path steps kept per sample (longer paths are cut, shorter ones padded and masked)
    horizon: int = 8
    #: seconds per path step; VAMOS has no timestamps, so 1 gives metres per step (documented default)
    dt: float = 1.0
    #: the action is the mean of the first k valid steps (1: the first step)
    action_steps: int = 1
    #: L, bytes of UTF-8 instruction text kept (longer ones are cut on a character boundary)
    max_instruction_bytes: int = 256

    def __post_init__(self):
        for name in ("horizon", "action_steps", "max_instruction_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.action_steps > self.horizon:
            raise ValueError(f"action_steps ({self.action_steps}) must be <= horizon ({self.horizon})")
        if not (isinstance(self.dt, (int, float)) and not isinstance(self.dt, bool) and 0 < self.dt < float("inf")):
            raise ValueError(f"dt must be a finite number > 0 (seconds per path step), got {self.dt!r}")


def velocities(path: np.ndarray, horizon: int, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Robot-frame path [n, >=2] -> (v float32 [horizon, 2], valid bool [horizon]): per-step
    planar displacement / dt, zero-padded past the path's end."""
    steps = np.diff(np.asarray(path, np.float64)[:, :2], axis=0)[:horizon] / dt  # [min(n-1, H), 2]
    v = np.zeros((horizon, 2), np.float32)
    v[: len(steps)] = steps
    valid = np.arange(horizon) < len(steps)
    return v, valid


def encode_text(text: str, limit: int) -> tuple[np.ndarray, int]:
    """UTF-8 bytes of ``text`` zero-padded to uint8 [limit], cut on a character boundary; and its full length."""
    raw = text.encode("utf-8")
    cut = raw[:limit].decode("utf-8", "ignore").encode("utf-8")  # drops a character split by the cut
    out = np.zeros(limit, np.uint8)
    out[: len(cut)] = np.frombuffer(cut, np.uint8)
    return out, len(raw)


class VelocityStage(Stage):
    name = "velocity"
    code_version = "1"
    reads_files = False
    uses = ("poses", "labels")
    required_uses = ("poses", "labels")
    Settings = VelocitySettings

    def __init__(self, settings, source, source_options):
        super().__init__(settings, source, source_options)
        have = declared_fields(source, self.uses)
        if not {"trajectory", "goal", "instruction"} <= have:
            raise ConfigError(f"stage 'velocity' needs a source whose records carry trajectory, goal and instruction "
                              f"(the vamos source); {getattr(source, 'kind', type(source).__name__)!r} does not")

    def spec(self):
        return get_spec("velocity")

    def dims(self) -> dict[str, int]:
        return {"H": self.settings.horizon, "L": self.settings.max_instruction_bytes}

    def prepare(self, episode, upstream: Mapping) -> Prepared:
        r = self.record(episode)
        s = self.settings
        path = np.asarray(r["trajectory"], np.float64)
        if path.ndim != 2 or path.shape[0] < 2 or path.shape[1] < 2 or not np.isfinite(path).all():
            raise Quarantine(f"trajectory must be >= 2 finite points, got shape {path.shape}")
        v, valid = velocities(path, s.horizon, s.dt)
        k = min(s.action_steps, int(valid.sum()))
        action = v[:k].astype(np.float64).mean(0).astype(np.float32)
        text, n = encode_text(str(r["instruction"]), s.max_instruction_bytes)
        return Prepared(episode.episode_id, {"v": v, "v_valid": valid, "action": action,
                                             "goal": np.asarray(r["goal"], np.float32).reshape(2),
                                             "instruction": text, "instruction_bytes": np.int32(n)})

    def compute(self, items):
        return [it.payload for it in items]
