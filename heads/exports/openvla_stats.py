"""OpenVLA's ``dataset_statistics.json`` from a ``velocity`` cache, and OpenVLA's action tokens.

The file, as OpenVLA's ``save_dataset_statistics`` writes it (prismatic/vla/datasets/rlds/utils/
data_utils.py; ``predict_action(..., unnorm_key=KEY)`` looks the key up)::

    {KEY: {"action":  {"mean", "std", "max", "min", "q01", "q99", "mask"},
           "proprio": {"mean", "std", "max", "min", "q01", "q99"},
           "num_transitions": N, "num_trajectories": N}}

``action`` is the cache's ``action`` column [N, 2] (one transition per sample: VAMOS rows are
samples); std is the population std (``np.std``); q01/q99 are ``np.quantile``'s default (linear)
quantiles; ``mask`` is all true (every dimension normalised); ``proprio`` is all zeros, as OpenVLA
computes it for a dataset without proprioception (``tf.zeros_like(action)``). Values are computed
in float64 from the cache's float32 actions (OpenVLA sums in float32: its means may differ from
these in the last float32 bits).

One streamed pass over the cache's parts, memory flat in N: running moments (Chan et al.'s
pairwise update), running min/max, and for each quantile only the tail of order statistics it
needs (N is known from the manifest, so the ranks np.quantile interpolates between are known
before reading): the smallest ~1% and largest ~1% of values per dimension. numpy has no
streaming quantile, hence the hand-written rank arithmetic (``_numpy_linear_quantile``), checked
bit for bit against ``np.quantile`` in the tests.

Tokens (prismatic/vla/action_tokenizer.py): BOUNDS_Q99 normalisation to [-1, 1]
(``normalize_q99``), 256 uniform bin edges on [-1, 1], ``np.digitize`` and
``token = vocab_size - bin`` (``action_to_tokens``); the inverse maps a token to its bin centre
(``tokens_to_action``) then ``unnormalize_q99``. Round trip error <= half a bin width (1/255).
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import numpy as np

from navcache.cache_specs.layout import PARTS, atomic_write_bytes
from navcache.cache_specs.parts import open_part_data, read_part_meta
from navcache.cache_specs.reader import open_cache

__all__ = ["StreamingStats", "openvla_statistics", "export_openvla_stats", "normalize_q99", "unnormalize_q99",
           "action_to_tokens", "tokens_to_action", "action_to_bins", "cache_tokens", "N_BINS", "DEFAULT_KEY"]

DEFAULT_KEY = "vamos_dataset"
N_BINS = 256
QUANTILES = {"q01": 0.01, "q99": 0.99}
_BLOCK = 1 << 16  # rows gathered per update
_OPEN_PARTS = 8


def _numpy_linear_quantile(n: int, q: float) -> tuple[int, int, float]:
    """(lower rank, upper rank, gamma) that ``np.quantile(x, q)`` (method "linear") interpolates
    between for n values: virtual index (n - 1) * q, evaluated as numpy's "linear" method does."""
    v = (n - 1) * q
    lo = math.floor(v)
    gamma = v - lo
    return min(max(lo, 0), n - 1), min(max(lo + 1, 0), n - 1), gamma


def _lerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """numpy's quantile interpolation: a + (b - a) t, or b - (b - a)(1 - t) when t >= 0.5."""
    d = b - a
    return b - d * (1 - t) if t >= 0.5 else a + d * t


class StreamingStats:
    """OpenVLA's statistics of N rows of D values, fed in blocks; exact min/max/quantiles, float64 moments.

    ``n``: the number of rows that will be fed (needed up front to know which ranks to keep)."""

    def __init__(self, n: int, dims: int):
        if n < 1:
            raise ValueError("no rows to compute statistics over")
        self.n, self.dims, self.seen = n, dims, 0
        self.mean = np.zeros(dims)
        self.m2 = np.zeros(dims)
        self.min = np.full(dims, np.inf)
        self.max = np.full(dims, -np.inf)
        self.ranks = {k: _numpy_linear_quantile(n, q) for k, q in QUANTILES.items()}
        self.k_low = max(hi for k, (_, hi, _) in self.ranks.items() if QUANTILES[k] < 0.5) + 1
        self.k_high = n - min(lo for k, (lo, _, _) in self.ranks.items() if QUANTILES[k] >= 0.5)
        self.low = np.empty((0, dims))   # the smallest k_low values seen, per dimension (unsorted)
        self.high = np.empty((0, dims))  # the largest k_high values seen, per dimension (unsorted)

    def update(self, x: np.ndarray) -> None:
        """Feed rows x [b, D]."""
        x = np.asarray(x, np.float64).reshape(-1, self.dims)
        if not len(x):
            return
        if self.seen + len(x) > self.n:
            raise ValueError(f"fed {self.seen + len(x)} rows, more than the {self.n} announced")
        nb, mb = len(x), x.mean(0)
        m2b = ((x - mb) ** 2).sum(0)
        total = self.seen + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / total)
        self.m2 = self.m2 + m2b + delta**2 * (self.seen * nb / total)
        self.seen = total
        self.min, self.max = np.minimum(self.min, x.min(0)), np.maximum(self.max, x.max(0))
        self.low = _keep(np.concatenate([self.low, x]), self.k_low, smallest=True)
        self.high = _keep(np.concatenate([self.high, x]), self.k_high, smallest=False)

    def result(self) -> dict:
        """{"mean", "std", "max", "min", "q01", "q99"} as lists of floats (after all n rows)."""
        if self.seen != self.n:
            raise ValueError(f"fed {self.seen} rows of the {self.n} announced")
        low, high = np.sort(self.low, axis=0), np.sort(self.high, axis=0)
        out = {"mean": self.mean.tolist(), "std": np.sqrt(self.m2 / self.n).tolist(),
               "max": self.max.tolist(), "min": self.min.tolist()}
        for key, (lo, hi, gamma) in self.ranks.items():
            tail, offset = (low, 0) if QUANTILES[key] < 0.5 else (high, self.n - self.k_high)
            out[key] = _lerp(tail[lo - offset], tail[hi - offset], gamma).tolist()
        return out


def _keep(x: np.ndarray, k: int, smallest: bool) -> np.ndarray:
    """The k smallest (or largest) values of each column of x [m, D], unsorted."""
    if len(x) <= k:
        return x
    if smallest:
        return np.partition(x, k - 1, axis=0)[:k]
    return np.partition(x, len(x) - k, axis=0)[len(x) - k:]


def _live_rows(cache_path: Path, array: str) -> Iterator[np.ndarray]:
    """The ``array`` rows of the cache's ok episodes in blocks, in index order, streaming the index
    and keeping a few parts decoded (parts may hold dead rows and interleave in id order)."""
    import pyarrow.parquet as pq

    parts: OrderedDict[str, np.ndarray] = OrderedDict()
    index = pq.ParquetFile(cache_path / "index.parquet")
    for batch in index.iter_batches(batch_size=_BLOCK, columns=["part", "start", "status"]):
        cols = batch.to_pydict()
        rows = []
        for pid, start, status in zip(cols["part"], cols["start"], cols["status"]):
            if status != "ok":
                continue
            if pid not in parts:
                pdir = cache_path / PARTS / pid
                data = open_part_data(pdir, read_part_meta(pdir))
                try:
                    parts[pid] = np.asarray(data[array][...])
                finally:
                    data.close()
                if len(parts) > _OPEN_PARTS:
                    parts.popitem(last=False)
            parts.move_to_end(pid)
            rows.append(parts[pid][int(start)])
        if rows:
            yield np.stack(rows)


def openvla_statistics(cache_dir: Path, key: str = DEFAULT_KEY, array: str = "action") -> dict:
    """``{key: {...}}`` of a complete velocity cache (see the module docstring), in one streamed pass."""
    cache = open_cache(cache_dir)  # refuses an incomplete or damaged manifest
    if cache.spec.get("row") != "episode":
        raise ValueError(f"{cache_dir}: a {cache.spec.get('name')} cache has a row per frame; openvla-stats reads per-sample caches (velocity)")
    if array not in cache.spec["arrays"]:
        raise ValueError(f"{cache_dir}: no array {array!r} (arrays: {', '.join(cache.spec['arrays'])})")
    n = int(cache.manifest["counts"]["ok"])
    dims = int(np.prod(cache.spec["arrays"][array]["shape"]))
    stats = StreamingStats(n, dims)
    for block in _live_rows(cache.path, array):
        stats.update(block.reshape(len(block), dims))
    action = {**stats.result(), "mask": [True] * dims}
    zeros = [0.0] * dims
    proprio = {"mean": zeros, "std": zeros, "max": zeros, "min": zeros, "q01": zeros, "q99": zeros}
    return {key: {"action": action, "proprio": proprio, "num_transitions": n, "num_trajectories": n}}


def export_openvla_stats(cache_dir: Path, out: Path, key: str = DEFAULT_KEY) -> dict:
    """Write ``openvla_statistics`` to ``out`` (JSON, indent 2 as OpenVLA writes it), atomically."""
    stats = openvla_statistics(cache_dir, key)
    out = Path(out)
    atomic_write_bytes(out, json.dumps(stats, indent=2).encode())
    return stats


# -- OpenVLA's action normalisation and tokens ------------------------------------------------------


def normalize_q99(x: np.ndarray, action_stats: dict) -> np.ndarray:
    """BOUNDS_Q99: clip(2 (x - q01) / (q99 - q01 + 1e-8) - 1, -1, 1) where ``mask``; dimensions
    with min == max become 0 (OpenVLA's rule for unused dimensions). x [..., D] -> float64 [..., D]."""
    x = np.asarray(x, np.float64)
    lo, hi = np.asarray(action_stats["q01"], np.float64), np.asarray(action_stats["q99"], np.float64)
    mask = np.asarray(action_stats.get("mask", np.ones_like(lo, bool)), bool)
    out = np.where(mask, np.clip(2 * (x - lo) / (hi - lo + 1e-8) - 1, -1, 1), x)
    return np.where(np.asarray(action_stats["min"]) == np.asarray(action_stats["max"]), 0.0, out)


def unnormalize_q99(a: np.ndarray, action_stats: dict) -> np.ndarray:
    """predict_action's inverse: 0.5 (a + 1) (q99 - q01) + q01 where ``mask``. a [..., D] -> [..., D]."""
    a = np.asarray(a, np.float64)
    lo, hi = np.asarray(action_stats["q01"], np.float64), np.asarray(action_stats["q99"], np.float64)
    mask = np.asarray(action_stats.get("mask", np.ones_like(lo, bool)), bool)
    return np.where(mask, 0.5 * (a + 1) * (hi - lo) + lo, a)


def _edges(n_bins: int) -> np.ndarray:
    return np.linspace(-1.0, 1.0, n_bins)


def action_to_tokens(a: np.ndarray, vocab_size: int, n_bins: int = N_BINS) -> np.ndarray:
    """Normalised actions [..., D] in [-1, 1] -> int64 token ids [..., D]: vocab_size - digitize(clip(a))."""
    a = np.clip(np.asarray(a, np.float64), -1.0, 1.0)
    return (vocab_size - np.digitize(a, _edges(n_bins))).astype(np.int64)


def tokens_to_action(ids: np.ndarray, vocab_size: int, n_bins: int = N_BINS) -> np.ndarray:
    """Token ids [..., D] -> normalised actions [..., D]: the centre of bin clip(vocab_size - id - 1, 0, n_bins - 2)."""
    edges = _edges(n_bins)
    centres = (edges[:-1] + edges[1:]) / 2.0
    b = np.clip(vocab_size - np.asarray(ids, np.int64) - 1, 0, len(centres) - 1)
    return centres[b]


def action_to_bins(a: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Normalised actions [..., D] -> int64 bin classes [..., D] in [0, n_bins - 1]: digitize(clip(a)) - 1,
    so that ``action_to_tokens(a, V) == V - 1 - action_to_bins(a)`` (the class a token head predicts)."""
    a = np.clip(np.asarray(a, np.float64), -1.0, 1.0)
    return (np.digitize(a, _edges(n_bins)) - 1).astype(np.int64)


def cache_tokens(cache_dir: Path, action_stats: dict, vocab_size: int, array: str = "action") -> tuple[list[str], np.ndarray]:
    """(sample ids, int64 token ids [N, ..., D]) of a velocity cache's ``array``, normalised with ``action_stats``.

    OpenVLA's action tokens as a read-time column. They are not stored in the cache because they
    depend on the TRAIN split's q01/q99 (``openvla_statistics(train cache)[key]["action"]``): a
    stored column would go stale whenever the train split changes, and the val split's own
    statistics are the wrong ones to tokenise it with. Computing them costs one pass over [N, 2].
    """
    with open_cache(cache_dir) as cache:
        return list(cache.episodes), action_to_tokens(normalize_q99(cache.load(array), action_stats), vocab_size)
