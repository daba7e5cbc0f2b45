"""What a reader checks before it trusts a part, and what a failed read becomes.

Damage used to read as data: zarr returns its fill value (zeros) for a chunk whose shard file is
gone or empty, and a part folder renamed over another reads as that other part. So a part is opened
only after cheap checks that read no data byte:

* files (``check_part_files``, every open): one walk of the part folder; each file part.json lists
  (``files``, recorded at commit) exists with its recorded size, and no unlisted file sits there (a
  zarr shard is read if present, recorded or not). Sizes come from the walk's stat calls: one per
  file, and a zarr part has one shard per array, so the cost is per array, not per chunk;
* identity and episodes (``check_part_meta``, when a cache manifest is at hand): part.json's bytes
  hash to what the manifest recorded for this part id (a swapped, replaced or edited part fails),
  and every index row pointing into the part matches an entry of part.json (start, length, status).

Reads then rely on the per-chunk checksums the backends store (crc32c in zarr, fletcher32 in HDF5):
``CheckedPart`` turns a decode failure into ``DamagedCache`` naming the part, the array and the
repair command. Recomputing every byte's sha256 and every decoded array stays in ``verify``.

Uncompressed chunks (``zarr-raw``, ``hdf5-raw``) are read from memory-mapped files
(``backends.mapped``), which changes when checksums are checked, not what is checked:

* before an array's map is read (its first read in an open part), every chunk extent its index
  names (zarr's shard index, itself crc32c-checked; HDF5's chunk table) must lie inside the file:
  a file cut short before that raises ``DamagedCache``, never SIGBUS;
* each chunk's stored checksum (crc32c, or fletcher32 for HDF5 chunks that carry one) is verified
  the first time a read touches the chunk in that open part (a per-chunk bitmap), not on every
  read: a chunk damaged on disk before its first read raises ``DamagedCache``; a part closed and
  opened again (LRU eviction, another process) verifies its chunks again. Compressed chunks are
  still verified on every read, as their decode reads the stored bytes anyway.

Residual risk, accepted: a file truncated *while mapped* makes the next read of a page past its
new end raise SIGBUS (the process dies; nothing wrong is returned), and bytes changed on disk after
their chunk was verified are read as they now are. Committed parts are immutable after their
atomic rename (``parts``): only damage from outside navcache (a disk fault, a person editing or
truncating a file under a running reader) can do either; ``navcache verify`` finds it afterwards.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .errors import DamagedCache
from .layout import PART_JSON

REPAIR = "run `navcache verify --repair` to rebuild it"
#: what a backend raises when stored bytes do not decode (a checksum, a short read, a bad header);
#: zarr's crc32c mismatch is a ValueError, h5py's fletcher32 failure an OSError
DECODE_ERRORS = (ValueError, OSError, RuntimeError, EOFError)


def damaged(part_dir: Path, detail: str) -> DamagedCache:
    """The error for part ``part_dir`` (``<cache>/parts/<part>``): names cache, part and the fix."""
    part_dir = Path(part_dir)
    return DamagedCache(f"{part_dir.parent.parent}: part {part_dir.name} is damaged: {detail}; {REPAIR}")


def walk_sizes(root: Path) -> dict[str, int]:
    """{path relative to ``root`` ('/'-separated): size in bytes} of every file below ``root``.

    ``os.scandir`` rather than ``Path.rglob`` + ``stat``: one directory read per folder and one
    stat per file, which is what keeps a part's check at a listing's cost."""
    out: dict[str, int] = {}
    stack = [("", os.fspath(root))]
    while stack:
        prefix, folder = stack.pop()
        with os.scandir(folder) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append((prefix + e.name + "/", e.path))
                else:
                    try:
                        out[prefix + e.name] = e.stat().st_size
                    except FileNotFoundError:  # a dangling link: as good as missing
                        pass
    return out


def check_part_files(part_dir: Path, files: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What is wrong with the part folder's files against part.json's ``files`` record ({relative
    path: {"size": bytes, ...}}); empty when every recorded file is there with its size and
    nothing else is."""
    try:
        found = walk_sizes(part_dir)
    except FileNotFoundError:
        return ["the part folder is missing"]
    found.pop(PART_JSON, None)
    problems = []
    for rel, rec in files.items():
        size = found.pop(rel.replace(os.sep, "/"), None)
        if size is None:
            problems.append(f"{rel} is missing")
        elif size != rec["size"]:
            how = "truncated: " if size < rec["size"] else ""
            problems.append(f"{rel} is {how}{size} bytes, {rec['size']} were written")
    problems += [f"{rel} was not written with the part" for rel in sorted(found)]
    return problems


def raise_on_files(part_dir: Path, meta: Mapping[str, Any]) -> None:
    """DamagedCache when ``check_part_files`` finds anything (the first three problems named).
    A part.json without a ``files`` record (none written so far lacks one) opens unchecked."""
    if "files" not in meta:
        return
    problems = check_part_files(part_dir, meta["files"])
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise damaged(part_dir, "; ".join(problems[:3]) + more)


def read_part_json(part_dir: Path) -> tuple[bytes, dict]:
    """(raw bytes, parsed) of the part's part.json; DamagedCache when missing or unparsable."""
    try:
        raw = (Path(part_dir) / PART_JSON).read_bytes()
    except FileNotFoundError:
        raise damaged(part_dir, f"the part folder or its {PART_JSON} is missing") from None
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise damaged(part_dir, f"{PART_JSON} is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise damaged(part_dir, f"{PART_JSON} is not a JSON object")
    return raw, meta


def check_part_meta(part_dir: Path, raw: bytes, meta: Mapping[str, Any], record: Mapping[str, Any] | None, rows: Iterable[tuple[str, int, int, str]]) -> None:
    """Part.json (``raw`` bytes, ``meta`` parsed) against the manifest's ``record`` of this part
    (fingerprint, part_json_sha256) and the index ``rows`` (episode id, start, length, status)
    that point into it; DamagedCache naming the first mismatch."""
    pid = Path(part_dir).name
    holds = meta.get("part")
    if holds != pid:
        raise damaged(part_dir, f"its {PART_JSON} describes part {holds} (part folders swapped, renamed or copied)")
    if record is not None:
        if meta.get("fingerprint") != record.get("fingerprint"):
            raise damaged(part_dir, "its fingerprint differs from the manifest's (replaced by another build)")
        want = record.get("part_json_sha256")
        if want is not None and hashlib.sha256(raw).hexdigest() != want:
            raise damaged(part_dir, f"its {PART_JSON} differs from the one the manifest recorded (edited or replaced)")
    entries = {e["episode_id"]: e for e in meta.get("episodes", ())}
    for eid, start, length, status in rows:
        e = entries.get(eid)
        if e is None:
            raise damaged(part_dir, f"the index puts episode {eid!r} in it, but its {PART_JSON} does not hold it")
        if (e["start"], e["length"], e["status"]) != (start, length, status):
            raise damaged(
                part_dir,
                f"the index has episode {eid!r} at rows {start}:{start + length} ({status}), its {PART_JSON} at "
                f"{e['start']}:{e['start'] + e['length']} ({e['status']})",
            )


class CheckedArray:
    """One array of a ``CheckedPart``: slicing as the backend's, decode failures as DamagedCache."""

    def __init__(self, arr, part_dir: Path, name: str, data=None):
        self._a, self._dir, self.name, self._data = arr, part_dir, name, data
        self.shape, self.dtype = tuple(arr.shape), np.dtype(arr.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if self._data is not None and isinstance(key, slice) and key.step in (None, 1):
            lo, hi, _ = key.indices(self.shape[0])  # a row range: the backend's read_into, no zarr event loop
            out = np.empty((max(0, hi - lo),) + self.shape[1:], self.dtype)
            self._data.read_into(self.name, lo, hi, out)
            return out
        try:
            return np.asarray(self._a[key])
        except DECODE_ERRORS as e:
            raise damaged(self._dir, f"array {self.name!r} does not decode ({type(e).__name__}: {e})") from e

    def __array__(self, dtype=None, copy=None):
        a = self[...]
        return a if dtype is None else a.astype(dtype)


class CheckedPart:
    """A backend's opened part (``PartData``) whose reads raise DamagedCache naming the part when
    the backend's checksum or decoder fails, instead of the backend's own error text."""

    def __init__(self, data, part_dir: Path):
        self._data, self.dir = data, Path(part_dir)
        self._arrays: dict[str, CheckedArray] = {}

    def names(self) -> list[str]:
        return self._data.names()

    def __getitem__(self, name: str) -> CheckedArray:
        if name not in self._arrays:
            self._arrays[name] = CheckedArray(self._data[name], self.dir, name, self)
        return self._arrays[name]

    def chunk_rows(self, name: str) -> int:
        return self._data.chunk_rows(name)

    def read_into(self, name: str, lo: int, hi: int, out: np.ndarray) -> None:
        """Rows ``lo:hi`` of ``name`` into ``out`` [hi - lo, *row_shape] (C-contiguous)."""
        try:
            self._data.read_into(name, lo, hi, out)
        except DECODE_ERRORS as e:
            raise damaged(self.dir, f"array {name!r} rows {lo}:{hi} do not decode ({type(e).__name__}: {e})") from e

    def read_runs(self, name: str, runs, out: np.ndarray) -> None:
        """Rows ``lo:hi`` of ``name`` into ``out[dst : dst + hi - lo]`` for each ``(lo, hi, dst)``."""
        try:
            self._data.read_runs(name, runs, out)
        except DECODE_ERRORS:
            for lo, hi, dst in runs:  # again run by run: the error names the rows that fail
                self.read_into(name, lo, hi, out[dst : dst + hi - lo])
            raise

    def close(self) -> None:
        self._data.close()
