"""``covisibility``: per ordered keyframe pair (A, B), where B's content lands in A's view.

Reads the ``geometry`` rows (any provider) and the ``keyframes`` rows of an episode; the maths,
the confidence rule, MapAnything's depth tolerance and the out-of-view ring are in
``pipeline/covisibility.py``. Per-pair quarantine does not exist in the cache layout (quarantine
is per episode), so an episode with any bad pair (a keyframe without a confident point, a
degenerate camera, a keyframe whose geometry row is missing) is quarantined with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from navcache.cache_specs.specs import get_spec

from ..errors import Quarantine
from .base import Prepared, Stage


@dataclass(frozen=True)
class CovisibilitySettings:
    #: G: the in-view grid is G x G cells over A's image (then 5 ring cells)
    grid: int = 16
    #: world units per metre, scaling MapAnything's metric depth tolerance: 1 for metric
    #: geometry (the ``gt`` provider); for VGGT's normalised scale, its units per metre
    units_per_metre: float = 1.0
    #: the geometry stride; None infers it from the principal points (centred, as VGGT's)
    stride: int | None = None

    def __post_init__(self):
        if self.grid < 1:
            raise ValueError(f"grid must be >= 1, got {self.grid}")
        if not self.units_per_metre > 0:
            raise ValueError(f"units_per_metre must be > 0, got {self.units_per_metre}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be >= 1 or null, got {self.stride}")


class CovisibilityStage(Stage):
    name = "covisibility"
    code_version = "1"
    reads_files = False  # everything comes from the upstream rows, whose fingerprints are upstream
    uses = ()
    Settings = CovisibilitySettings

    @property
    def consumes(self) -> tuple[str, ...]:
        return ("geometry", "keyframes")

    def spec(self):
        return get_spec("covisibility")

    def dims(self) -> dict[str, int]:
        return {"C": self.settings.grid ** 2 + 5}

    @property
    def batch_cost(self) -> int:
        return 1

    def prepare(self, episode, upstream: Mapping) -> Prepared:
        from .. import covisibility as cv

        try:
            kg = cv.gather(upstream["geometry"], upstream["keyframes"], self.settings.stride)
        except ValueError as e:
            raise Quarantine(f"covisibility: {e}") from None
        return Prepared(episode.episode_id, cv.covisibility(kg, self.settings.grid, self.settings.units_per_metre))

    def compute(self, items):
        return [it.payload for it in items]
