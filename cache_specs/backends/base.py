"""The storage interface every backend honours (the conformance suite in tests/ checks it).

A backend stores one *part*: a handful of named arrays with a shared leading row axis, written once
by one writer into a fresh directory. Everything above this (atomic commit, manifests, checksums,
the index) is backend-independent and lives in ``cache_specs.layout`` / ``cache_specs.parts``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np


class PartData(Protocol):
    """An opened part: lazy arrays that support ``shape``, ``dtype`` and numpy-style slicing."""

    def names(self) -> list[str]: ...

    def __getitem__(self, name: str) -> Any: ...

    def chunk_rows(self, name: str) -> int:
        """Rows per stored chunk of array ``name``: reads aligned to it decode no extra rows."""

    def read_into(self, name: str, lo: int, hi: int, out: Any) -> None:
        """Rows ``lo:hi`` of ``name`` into the C-contiguous numpy array ``out`` (no intermediate copy)."""

    def read_runs(self, name: str, runs: Any, out: Any) -> None:
        """``read_into`` of rows ``lo:hi`` into ``out[dst : dst + hi - lo]`` for each ``(lo, hi, dst)``
        of ``runs`` (a batch's reads of one array, in one call)."""

    def close(self) -> None: ...


class Backend(Protocol):
    name: str
    #: file or folder name of the data inside a part folder
    data_name: str

    def write(self, part_dir: Path, arrays: Mapping[str, np.ndarray], chunk_rows: int | Mapping[str, int]) -> None:
        """Write ``arrays`` (all with the same leading row count) under ``part_dir/data_name``,
        ``chunk_rows`` rows per chunk (one number, or {array name: rows}: ``parts.episode_chunk_rows``).

        ``part_dir`` is a private temporary folder: exactly one writer ever touches it.
        """

    def open(self, part_dir: Path) -> PartData: ...
