"""Writing and reading one part: a batch of episodes committed atomically by a single writer.

Protocol (crash-safe at every instruction): write data + ``part.json`` into a private
``parts/.tmp-*`` folder, fsync, then ``rename`` it to ``parts/part-NNNNN``. A reader sees either
the old complete part, the new complete part, or none; a SIGKILL leaves only an orphan temporary
folder, which the next run (or ``navcache verify --repair``) deletes.

A part is immutable once committed. Each episode entry of ``part.json`` carries the episode's own
fingerprint (format 2), so a later plan can keep every episode whose inputs did not change,
wherever it lives; the cache index decides which rows are live (a part may hold dead rows of
superseded episodes until compaction copies its live rows into a new part: ``copy_part``).
"""
from __future__ import annotations

import errno
import hashlib
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .backends import get_backend
from .layout import PART_JSON, TMP_PREFIX, TRASH_PREFIX, atomic_write_json, fsync_dir, fsync_tree, list_files, private_name, read_json, sha256_file
from .spec import CacheSpec

PART_FORMAT = "navcache-part/2"
#: formats a reader still opens; planning keeps only episodes of the current one (format 1 had no
#: per-episode fingerprints, so its caches rebuild once)
READABLE_PART_FORMATS = ("navcache-part/1", PART_FORMAT)


@dataclass
class EpisodeResult:
    """One episode's outcome: arrays on success (spec layout), or a quarantine reason."""

    episode_id: str
    arrays: Mapping[str, np.ndarray] | None = None
    reason: str | None = None
    meta: dict = field(default_factory=dict)


def part_number(pid: str) -> int:
    """N of ``part-N`` (-1 for another name)."""
    try:
        return int(pid.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def free_numbers(taken: Iterable[int]) -> Iterator[int]:
    """The part numbers not in ``taken``, lowest first: new parts reuse the names of swept ones."""
    taken = set(taken)
    n = 0
    while True:
        if n not in taken:
            yield n
        n += 1


def part_fingerprint(backend: str, episodes: Sequence[tuple[str, str | None]]) -> str:
    """A part's fingerprint: its backend and its (episode id, episode fingerprint) list, in storage
    order. Content-defined, so a part built by a run and the same episodes copied by compaction
    get the same fingerprint, and a backend switch never matches a part of the other backend."""
    from .layout import canonical_json

    return hashlib.sha256(canonical_json({"backend": backend, "episodes": [list(e) for e in episodes]})).hexdigest()


def array_sha256(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.data if a.size else b"")
    return h.hexdigest()


def _assemble(spec: CacheSpec, dims: Mapping[str, int], results: Sequence[EpisodeResult]):
    """Stack ok episodes into part arrays; return (arrays, episode table)."""
    want = spec.resolved(dims)
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in want}
    episodes, start = [], 0
    for r in results:
        entry: dict[str, Any] = {"episode_id": r.episode_id, "start": start, "length": 0}
        if r.reason is None and r.arrays is not None:
            try:
                n = spec.check_episode(r.arrays, dims)
            except ValueError as e:
                # A stage produced the wrong layout: that is a bug, but one bad episode must not
                # lose the part; it is quarantined with the exact mismatch.
                r = EpisodeResult(r.episode_id, None, f"internal: output does not match spec: {e}", r.meta)
            else:
                for name in want:
                    a = np.asarray(r.arrays[name])
                    chunks[name].append(a[None] if spec.row == "episode" else a)
                entry["length"] = n
                start += n
        entry["status"] = "ok" if r.reason is None else "quarantined"
        entry["reason"] = r.reason
        if r.meta:
            entry["meta"] = r.meta
        episodes.append(entry)
    arrays = {}
    for name, (dtype, shape) in want.items():
        arrays[name] = np.concatenate(chunks[name], axis=0) if chunks[name] else np.zeros((0, *shape), dtype)
    return arrays, episodes


def write_part(
    parts_dir: Path,
    pid: str,
    fingerprint: str,
    spec: CacheSpec,
    dims: Mapping[str, int],
    results: Sequence[EpisodeResult],
    backend: str = "zarr",
    chunk_rows: int = 64,
    provenance: Mapping[str, Any] | None = None,
    episode_fingerprints: Mapping[str, str] | None = None,
) -> dict:
    """Write and atomically commit one part; return its ``part.json`` content.

    ``episode_fingerprints`` ({episode id: fingerprint}) go into the episode entries: what lets a
    later plan keep these episodes when the rest of the dataset changes."""
    arrays, episodes = _assemble(spec, dims, results)
    for e in episodes:
        if episode_fingerprints is not None:
            e["fingerprint"] = episode_fingerprints[e["episode_id"]]
    return commit_part(parts_dir, pid, fingerprint, spec.to_json(dims), arrays, episodes, backend, chunk_rows, provenance)


#: a chunk of whole episodes grows (in powers of two) until it holds this many bytes or ``chunk_rows``
MIN_CHUNK_BYTES = 16 << 10
#: below this a chunk that tiles unequal episodes is not worth its count: ``chunk_rows`` instead
MIN_ALIGNED_BYTES = 4 << 10


def episode_chunk_rows(lengths: Sequence[int], row_bytes: int, chunk_rows: int) -> int:
    """Rows per chunk of an array whose part holds episodes of ``lengths`` rows back to back.

    A read of one episode should decode that episode's bytes, not its neighbours' (64-row chunks
    made an 8-row episode read decode 8 episodes). So chunk boundaries follow episode boundaries:

    * every episode has the same length L <= ``chunk_rows``: a chunk is 2^j whole episodes, the
      fewest that reach ``MIN_CHUNK_BYTES`` (so tiny rows, e.g. a [T] int array or a row="episode"
      cache, still get ``chunk_rows``-sized chunks), never more than ``chunk_rows`` rows. Powers of
      two keep the arrays of a part nested: a block of the largest chunk is whole chunks of all;
    * otherwise: the largest divisor of every episode length that is <= ``chunk_rows`` (each
      episode is whole chunks), unless such chunks hold under ``MIN_ALIGNED_BYTES``; then
      ``chunk_rows`` as before (a few bytes a row: alignment saves nothing).

    Layout only: the stored values, their checksums and the part fingerprint do not depend on it,
    and readers take the chunking from each part's metadata (older parts keep theirs).
    """
    ls = sorted({int(n) for n in lengths if n > 0})
    if not ls:
        return chunk_rows
    if len(ls) == 1 and ls[0] <= chunk_rows:
        size, k = ls[0], 1
        while 2 * k * size <= chunk_rows and k * size * row_bytes < MIN_CHUNK_BYTES:
            k *= 2
        return k * size
    g = math.gcd(*ls)
    d = max(x for x in range(1, min(g, chunk_rows) + 1) if g % x == 0)
    return d if d * row_bytes >= MIN_ALIGNED_BYTES else chunk_rows


def commit_part(
    parts_dir: Path,
    pid: str,
    fingerprint: str,
    spec_json: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    episodes: Sequence[Mapping[str, Any]],
    backend: str,
    chunk_rows: int,
    provenance: Mapping[str, Any] | None = None,
) -> dict:
    """Write assembled ``arrays`` (rows of ``episodes`` back to back) under a private folder,
    checksum, fsync, and publish it as ``parts_dir/pid``; return the ``part.json`` content."""
    be = get_backend(backend)
    lengths = [e["length"] for e in episodes if e["status"] == "ok"]
    chunks = {n: episode_chunk_rows(lengths, a.dtype.itemsize * math.prod(a.shape[1:]), chunk_rows) for n, a in arrays.items()}
    _mkdirs_durable(parts_dir)
    tmp = parts_dir / private_name(TMP_PREFIX, pid)
    tmp.mkdir()
    try:
        be.write(tmp, arrays, chunks)
        files = {rel: {"size": (tmp / rel).stat().st_size, "sha256": sha256_file(tmp / rel)} for rel in list_files(tmp)}
        meta = {
            "format": PART_FORMAT,
            "part": pid,
            "fingerprint": fingerprint,
            "spec": dict(spec_json),
            "backend": backend,
            "n_rows": int(next(iter(arrays.values())).shape[0]) if arrays else 0,
            "n_episodes": len(episodes),
            "n_ok": sum(e["status"] == "ok" for e in episodes),
            "episodes": [dict(e) for e in episodes],
            "arrays": {n: {"dtype": a.dtype.str, "shape": list(a.shape), "sha256": array_sha256(a)} for n, a in arrays.items()},
            "files": files,
            "provenance": dict(provenance or {}),
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_json(tmp / PART_JSON, meta)
        fsync_tree(tmp)
        _publish(tmp, parts_dir / pid, fingerprint, backend)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _layout(spec_json: dict) -> dict:
    """A part's stored spec without the arrays' doc strings: parts written before a doc was reworded
    hold the same layout (fingerprints leave docs out for the same reason)."""
    return {**spec_json, "arrays": {k: {kk: vv for kk, vv in a.items() if kk != "doc"} for k, a in spec_json["arrays"].items()}}


def copy_part(parts_dir: Path, pid: str, fingerprint: str, picks: Sequence[tuple[Path, Mapping[str, Any], str]], chunk_rows: int) -> dict:
    """Compaction: commit a new part holding the rows of ``picks`` ((source part dir, its
    part.json, episode id), in this order), copied array by array, never re-encoded.

    The copy decodes and re-writes values (not bytes), so the new part's array checksums are those
    of the same rows written by ``write_part``; source parts are left as they are.
    """
    if not picks:
        raise ValueError("copy_part needs at least one episode")
    first = picks[0][1]
    spec_json, backend = first["spec"], first["backend"]
    names = list(first["arrays"])
    blocks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    episodes, start, opened = [], 0, {}
    try:
        for src, meta, eid in picks:
            if _layout(meta["spec"]) != _layout(spec_json) or meta["backend"] != backend:
                raise ValueError(f"copy_part: {src} has another spec or backend than {picks[0][0]}")
            e = next(x for x in meta["episodes"] if x["episode_id"] == eid)
            if e["status"] == "ok" and e["length"]:
                if src not in opened:
                    opened[src] = open_part_data(src, meta)
                for n in names:
                    blocks[n].append(np.asarray(opened[src][n][e["start"] : e["start"] + e["length"]]))
            episodes.append({**e, "start": start})
            start += e["length"] if e["status"] == "ok" else 0
    finally:
        for d in opened.values():
            d.close()
    arrays = {}
    for n in names:
        a = first["arrays"][n]
        arrays[n] = np.concatenate(blocks[n]) if blocks[n] else np.zeros((0, *a["shape"][1:]), np.dtype(a["dtype"]))
    return commit_part(parts_dir, pid, fingerprint, spec_json, arrays, episodes, backend, chunk_rows, first.get("provenance"))


def _mkdirs_durable(folder: Path) -> None:
    """Create ``folder`` and its missing parents, fsyncing each new one's parent: a committed part
    must not vanish after a crash with a folder entry that never reached the disk (NFS included)."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        fsync_dir(d.parent)


def _publish(tmp: Path, final: Path, fingerprint: str, backend: str) -> None:
    """Rename ``tmp`` to ``final``; an existing part with the same fingerprint and backend wins
    (idempotent retries); one in another backend is replaced (a backend switch)."""
    for _ in range(3):
        if final.exists():
            old = read_part_meta(final)
            if old is not None and old.get("fingerprint") == fingerprint and old.get("backend") == backend:
                return  # another attempt (e.g. a retried dask task) already committed identical content
            trash = final.parent / private_name(TRASH_PREFIX, final.name)
            try:
                os.rename(final, trash)
            except FileNotFoundError:
                continue
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                continue  # lost a race with a concurrent writer of the same part: re-check its fingerprint
            raise
        fsync_dir(final.parent)
        return
    raise RuntimeError(f"could not publish part {final}: it keeps being replaced concurrently")


def read_part_meta(part_dir: Path) -> dict | None:
    """The part's ``part.json``, or None when absent or unreadable (treated as missing)."""
    try:
        meta = read_json(part_dir / PART_JSON)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") in READABLE_PART_FORMATS else None


def open_part_data(part_dir: Path, meta: Mapping[str, Any], check: bool = True, files_checked: bool = False):
    """The part's arrays (``PartData``). ``check`` (every reader): first compare the folder's files
    with part.json's record (a listing, no data read; skipped when ``files_checked``: a reader
    reopening a part it checked) and wrap the data so a failed checksum or decode raises
    ``DamagedCache`` naming the part (``integrity``); ``verify`` passes False to see the backend's
    own behaviour."""
    if not check:
        return get_backend(meta["backend"]).open(part_dir)
    from .integrity import DECODE_ERRORS, CheckedPart, damaged, raise_on_files

    if not files_checked:
        raise_on_files(part_dir, meta)
    try:
        data = get_backend(meta["backend"]).open(part_dir)
    except DECODE_ERRORS as e:
        raise damaged(part_dir, f"its data does not open ({type(e).__name__}: {e})") from e
    return CheckedPart(data, part_dir)


class PartEpisodes:
    """Per-episode access to one committed part, without the cache manifest.

    Downstream stages read their upstream this way (the plan says which part holds each episode),
    so a SLURM shard can build stage B's part of a group right after stage A's part of that group,
    before anyone has finalised stage A's cache.
    """

    def __init__(self, part_dir: Path):
        self.dir = part_dir
        meta = read_part_meta(part_dir)
        if meta is None:
            raise FileNotFoundError(f"{part_dir}: part missing or unreadable")
        self.meta = meta
        self.fingerprint = meta["fingerprint"]
        self._eps = {e["episode_id"]: e for e in meta["episodes"]}
        self._data = None
        self.row = meta["spec"]["row"]

    def episode_fingerprint(self, episode_id: str) -> str | None:
        """The fingerprint the episode was written with (None if absent, or a format-1 part)."""
        e = self._eps.get(episode_id)
        return None if e is None else e.get("fingerprint")

    def episode(self, episode_id: str) -> tuple[dict[str, np.ndarray] | None, str | None]:
        """(arrays, None) for an ok episode, (None, reason) for a quarantined or absent one."""
        e = self._eps.get(episode_id)
        if e is None:
            return None, "not present in the upstream part"
        if e["status"] != "ok":
            return None, e["reason"]
        if self._data is None:
            self._data = open_part_data(self.dir, self.meta)
        s, n = e["start"], e["length"]
        out = {name: np.asarray(self._data[name][s : s + n]) for name in self.meta["arrays"]}
        return ({k: v[0] for k, v in out.items()} if self.row == "episode" else out), None

    def close(self) -> None:
        if self._data is not None:
            self._data.close()
