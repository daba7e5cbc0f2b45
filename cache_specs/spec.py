"""What a cache holds: named arrays with a dtype and a per-row shape, and what a row is.

A spec is the contract between ``pipeline/`` (writers) and ``heads/`` (readers). Per-row shapes may
use symbolic dimensions (``"T"``, ``"D"``) that the producing stage resolves from its settings and
records in the cache manifest, so readers never guess.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np

RowKind = Literal["episode", "frame", "pair"]
ROW_KINDS: tuple[str, ...] = ("episode", "frame", "pair")


def many_rows(row: str) -> bool:
    """True for the row kinds where an episode contributes a variable number of rows ("frame",
    "pair"); they are stored alike (the index holds each episode's start and length)."""
    return row != "episode"


@dataclass(frozen=True)
class ArraySpec:
    """One array of a cache. ``shape`` is per row; str entries are symbolic dims."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    doc: str = ""

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ValueError(f"ArraySpec.name must be an identifier, got {self.name!r}")
        np.dtype(self.dtype)  # raises TypeError on an unknown dtype

    def resolve(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        try:
            return tuple(d if isinstance(d, int) else int(dims[d]) for d in self.shape)
        except KeyError as e:
            raise ValueError(f"array {self.name!r}: symbolic dim {e.args[0]!r} not given (have {sorted(dims)})") from None


@dataclass(frozen=True)
class CacheSpec:
    """A versioned cache layout.

    row="episode": every ok episode contributes exactly one row to every array.
    row="frame": every ok episode contributes ``length`` rows (its frames), the same for all arrays;
    the index stores each episode's (part, start, length).
    row="pair": stored exactly like "frame", but a row is an ordered pair of the episode's frames
    (e.g. covisibility's keyframe pairs), so readers never mistake its rows for frames.
    Bump ``version`` whenever the meaning or layout of an array changes: it enters every fingerprint.
    """

    name: str
    version: int
    row: RowKind
    arrays: tuple[ArraySpec, ...]
    doc: str = ""

    def __post_init__(self):
        if self.row not in ROW_KINDS:
            raise ValueError(f"CacheSpec.row must be one of {', '.join(ROW_KINDS)}, got {self.row!r}")
        names = [a.name for a in self.arrays]
        if len(set(names)) != len(names):
            raise ValueError(f"CacheSpec {self.name!r}: duplicate array names {names}")

    def array(self, name: str) -> ArraySpec:
        for a in self.arrays:
            if a.name == name:
                return a
        raise KeyError(f"spec {self.name!r} has no array {name!r}; arrays: {[a.name for a in self.arrays]}")

    def resolved(self, dims: Mapping[str, int]) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        return {a.name: (np.dtype(a.dtype), a.resolve(dims)) for a in self.arrays}

    def check_episode(self, arrays: Mapping[str, np.ndarray], dims: Mapping[str, int]) -> int:
        """Validate one episode's arrays against the spec; return its number of rows.

        For row="episode" arrays carry no leading row axis; for row="frame" they are [n, *shape].
        """
        want = self.resolved(dims)
        missing = set(want) - set(arrays)
        extra = set(arrays) - set(want)
        if missing or extra:
            raise ValueError(f"spec {self.name!r}: missing arrays {sorted(missing)}, unexpected {sorted(extra)}")
        n = None
        for name, (dtype, shape) in want.items():
            a = np.asarray(arrays[name])
            if many_rows(self.row) and a.ndim == 0:
                raise ValueError(f"spec {self.name!r}: array {name!r} is 0-d, want [n, *{shape}] (one row per frame)")
            if a.dtype != dtype:
                raise ValueError(f"spec {self.name!r}: array {name!r} has dtype {a.dtype}, want {dtype}")
            body = a.shape if self.row == "episode" else a.shape[1:]
            if tuple(body) != shape:
                raise ValueError(f"spec {self.name!r}: array {name!r} has per-row shape {tuple(body)}, want {shape}")
            rows = 1 if self.row == "episode" else a.shape[0]
            if n is not None and rows != n:
                raise ValueError(f"spec {self.name!r}: arrays disagree on the number of rows ({n} vs {rows})")
            n = rows
        return int(n or 0)

    def to_json(self, dims: Mapping[str, int], docs: bool = True) -> dict:
        """The spec with ``dims`` resolved; ``docs=False`` leaves out the arrays' doc strings (for
        fingerprints: rewording a doc must not recompute caches)."""
        if not docs:
            d = self.to_json(dims)
            return {**d, "arrays": {k: {kk: vv for kk, vv in a.items() if kk != "doc"} for k, a in d["arrays"].items()}}
        return {
            "name": self.name,
            "version": self.version,
            "row": self.row,
            "dims": dict(dims),
            "arrays": {a.name: {"dtype": a.dtype, "shape": list(a.resolve(dims)), "doc": a.doc} for a in self.arrays},
        }
