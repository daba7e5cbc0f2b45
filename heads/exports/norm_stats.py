"""openpi's ``norm_stats.json`` from a ``robot_meta`` cache, in one streamed pass.

    {"norm_stats": {"state":   {"mean": [S], "std": [S], "q01": [S], "q99": [S]},
                    "actions": {"mean": [A], "std": [A], "q01": [A], "q99": [A]}}}

as openpi's ``scripts/compute_norm_stats.py`` writes it (``shared/normalize.py``): ``actions`` are
the action chunks (offsets 0..H-1, clamped to the episode as LeRobot's ``delta_timestamps`` give
them, clamped repeats included, as openpi's loader feeds them) flattened to (-1, A), unpadded
dims; std = sqrt(E[x^2] - E[x]^2). Moments are accumulated in float64 part by part.

Quantiles: exact (``np.quantile``, linear interpolation) when the values fit ``max_exact_bytes``;
otherwise estimated from a uniform random sample of ``sample_size`` values per key (seeded
priority sampling: keep the smallest random keys), whose rank error is within
sqrt(ln(2 / 0.001) / (2 * sample_size)) with probability 0.999 (Dvoretzky-Kiefer-Wolfowitz), about
0.0019 for the default million: q01 is then a value between the 0.8th and 1.2th percentiles.
openpi's own quantiles come from a 5000-bin histogram, so they are off by up to a bin width.
Hand-rolled rather than a t-digest library: sampling needs only numpy and its error bound is exact.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from navcache.cache_specs.action_chunks import gather_chunks
from navcache.cache_specs.layout import PARTS, atomic_write_bytes
from navcache.cache_specs.parts import open_part_data, read_part_meta
from navcache.cache_specs.reader import open_cache

__all__ = ["NormStatsReport", "export_norm_stats", "norm_stats"]


class _Moments:
    """Running float64 sums, and either every value (exact quantiles) or a priority sample."""

    def __init__(self, exact: bool, sample_size: int, rng: np.random.Generator):
        self.exact, self.k, self.rng = exact, sample_size, rng
        self.n, self.s, self.ss = 0, 0.0, 0.0
        self.kept: list[np.ndarray] = []
        self.keys = np.empty(0)
        self.sample: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:  # x [N, D]
        x = x.astype(np.float64)
        self.n += len(x)
        self.s = self.s + x.sum(0)
        self.ss = self.ss + (x * x).sum(0)
        if self.exact:
            self.kept.append(x)
            return
        keys = self.rng.random(len(x))
        pool = x if self.sample is None else np.concatenate([self.sample, x])
        keys = np.concatenate([self.keys, keys])
        if len(keys) > self.k:
            keep = np.argpartition(keys, self.k)[: self.k]
            pool, keys = pool[keep], keys[keep]
        self.sample, self.keys = pool, keys

    def stats(self) -> dict[str, list[float]]:
        if self.n < 2:
            raise ValueError("norm stats need at least 2 values")
        mean = self.s / self.n
        std = np.sqrt(np.maximum(0.0, self.ss / self.n - mean * mean))
        values = np.concatenate(self.kept) if self.exact else self.sample
        q01, q99 = np.quantile(values, [0.01, 0.99], axis=0)
        return {"mean": mean.tolist(), "std": std.tolist(), "q01": q01.tolist(), "q99": q99.tolist()}


@dataclass
class NormStatsReport:
    out: str
    frames: int
    action_values: int
    horizon: int
    exact_quantiles: bool

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def norm_stats(cache_dir: Path, horizon: int, max_exact_bytes: int = 1 << 30, sample_size: int = 1_000_000,
               seed: int = 0) -> tuple[dict, NormStatsReport]:
    """({"norm_stats": {...}}, report) of one split's robot_meta cache (see the module docstring)."""
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
    cache = open_cache(cache_dir)
    ok = cache.index.filter(cache.index["status"] == "ok")
    frames = int(ok["length"].sum())
    rng = np.random.default_rng(seed)
    state = actions = None
    offsets = np.arange(horizon)
    for pid in sorted(set(ok["part"].to_list())):
        rows = ok.filter(ok["part"] == pid)
        pdir = cache.path / PARTS / pid
        data = open_part_data(pdir, read_part_meta(pdir))
        try:
            if state is None:  # the value count is known from the index before any is read
                exact = frames * (horizon * data["action"].shape[1] + data["state"].shape[1]) * 8 <= max_exact_bytes
                state, actions = _Moments(exact, sample_size, rng), _Moments(exact, sample_size, rng)
            for start, length in zip(rows["start"].to_list(), rows["length"].to_list()):
                a = np.asarray(data["action"][start:start + length])
                state.add(np.asarray(data["state"][start:start + length]))
                chunks, _ = gather_chunks(a, np.zeros(length, np.int64), offsets)  # one episode
                actions.add(chunks.reshape(-1, a.shape[1]))
        finally:
            data.close()
    if state is None:
        raise ValueError(f"{cache_dir}: no ok episode to compute norm stats from")
    out = {"norm_stats": {"state": state.stats(), "actions": actions.stats()}}
    return out, NormStatsReport("", frames, actions.n, horizon, exact)


def export_norm_stats(cache_dir: Path, out: Path, horizon: int, **kw) -> NormStatsReport:
    """Write ``norm_stats.json`` at ``out`` (atomic rename) and return the report."""
    stats, report = norm_stats(cache_dir, horizon, **kw)
    out = Path(out)
    atomic_write_bytes(out, json.dumps(stats, indent=2).encode())
    report.out = str(out)
    return report
