"""Reading the rows of joined episodes: from the parts on disk, or from arrays held in memory.

``TaskStream`` is the DataLoader side: each worker reads its share of the epoch's block reads.

Both sources return the same arrays for the same episodes, so a loader yields the same batches
whichever it uses. ``BlockReader`` turns a block's rows into samples (``"<cache>.<array>"`` keys)
and applies the sample transform. Objects here hold open zarr/HDF5 handles: build them inside the
process that reads (a DataLoader worker), never before a fork.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .join import EpisodeSlices
from .spec import many_rows
from .stream_buffers import BlockPool
from .stream_plan import BlockPlan, Task

#: ``alloc(name, shape, dtype) -> writable C-contiguous numpy array`` for array ``name``: a fresh
#: one, or a slot of the loader's recycled block buffers (``stream_buffers.BlockPool``)
Alloc = Callable[[str, tuple, np.dtype], np.ndarray]


def fresh(name: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
    return np.empty(shape, dtype)


class DiskRows:
    """Rows of one cache's selected arrays, read from its parts by (start, length) spans.

    Spans closer than a chunk are read as one contiguous run (the chunk is decoded anyway); at
    most ``max_open`` parts stay open (HDF5 keeps a file handle and a chunk cache per part).
    """

    def __init__(self, path: str | Path, arrays: Sequence[str], max_open: int = 8):
        from .reader import CacheReader

        # the loader checked every part against the index before any worker forked (``check``)
        self._reader = CacheReader(Path(path), check_index=False)
        self.arrays = list(arrays)
        spec = self._reader.spec["arrays"]
        # row shape and dtype from the cache's spec: opening each part's arrays only to learn
        # them costs more CPU than reading an 8 MiB block of raw chunks
        self._rows = {n: (tuple(spec[n]["shape"]), np.dtype(spec[n]["dtype"])) for n in self.arrays}
        self._open: OrderedDict = OrderedDict()
        self._max_open = max_open

    def _part(self, part: str):
        if part in self._open:
            self._open.move_to_end(part)
            return self._open[part]
        data = self._reader.open_part(part)
        entry = (data, max(data.chunk_rows(n) for n in self.arrays))
        self._open[part] = entry
        if len(self._open) > self._max_open:
            self._open.popitem(last=False)[1][0].close()
        return entry

    def read(self, part: str, start: np.ndarray, length: np.ndarray, alloc: Alloc = fresh) -> dict[str, np.ndarray]:
        """The spans' rows concatenated in the given order: {array: [sum(length), *row_shape]},
        each in an array from ``alloc(array name, shape, dtype)``."""
        data, chunk = self._part(part)
        order = np.argsort(start, kind="stable")
        s, e = start[order], start[order] + length[order]
        # a new run starts where the gap to everything before exceeds a chunk
        run_end = np.maximum.accumulate(e)
        brk = np.flatnonzero(s[1:] - run_end[:-1] > chunk) + 1
        lo_idx = np.concatenate([[0], brk])
        hi_idx = np.concatenate([brk, [len(s)]])
        runs = [(int(s[a]), int(run_end[b - 1])) for a, b in zip(lo_idx, hi_idx)]
        dst = np.concatenate([[0], np.cumsum(length)])
        contiguous = len(runs) == 1 and np.array_equal(order, np.arange(len(order))) and np.array_equal(start[1:], start[:-1] + length[:-1])
        out = {}
        for name in self.arrays:
            shape, dtype = self._rows[name]
            res = alloc(name, (int(dst[-1]),) + shape, dtype)
            if contiguous:  # the common case: a block's rows back to back, decoded straight into res
                data.read_into(name, runs[0][0], runs[0][1], res)
            else:
                for (lo, hi), a, b in zip(runs, lo_idx, hi_idx):
                    buf = np.asarray(data[name][lo:hi])
                    for k in order[a:b]:
                        res[dst[k] : dst[k + 1]] = buf[start[k] - lo : start[k] - lo + length[k]]
            out[name] = res
        return out

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1][0].close()


class HeldRows:
    """One cache's selected arrays for the kept episodes, in memory: episode i's rows are
    ``rows[off[i]:off[i] + length[i]]``. Loaded part by part, never the whole cache at once."""

    def __init__(self, path: str | Path, arrays: Sequence[str], slices: EpisodeSlices, dtypes: Mapping[str, tuple]):
        self.length = slices.length
        self.off = np.concatenate([[0], np.cumsum(slices.length)]).astype(np.int64)
        self.rows = {n: np.empty((int(self.off[-1]), *shape), dt) for n, (dt, shape) in dtypes.items() if n in arrays}
        disk = DiskRows(path, arrays, max_open=1)
        try:
            for p, part in enumerate(slices.parts):
                eps = np.flatnonzero(slices.part == p)
                got = disk.read(part, slices.start[eps], slices.length[eps])
                dst = np.concatenate([np.arange(self.off[i], self.off[i + 1]) for i in eps]) if len(eps) else np.zeros(0, np.int64)
                for n, a in got.items():
                    self.rows[n][dst] = a
        finally:
            disk.close()

    def gather(self, eps: np.ndarray, alloc: Alloc = fresh) -> dict[str, np.ndarray]:
        idx = np.concatenate([np.arange(self.off[i], self.off[i + 1]) for i in eps]) if len(eps) else np.zeros(0, np.int64)
        # mode="wrap": "raise" gathers into a hidden temporary first; idx is in range by construction
        return {n: np.take(a, idx, axis=0, out=alloc(n, (len(idx), *a.shape[1:]), a.dtype), mode="wrap") for n, a in self.rows.items()}

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.rows.values())


@dataclass(frozen=True)
class ReadSpec:
    """What a worker needs to read blocks (picklable; no open handles)."""

    paths: Mapping[str, str]  # cache name -> folder
    arrays: Mapping[str, tuple[str, ...]]  # cache name -> selected arrays
    slices: Mapping[str, EpisodeSlices]
    per_episode: bool  # sample = one episode ([F, ...] for row="frame" caches) or one row
    frames: Mapping[str, int]  # F of each row="frame" cache when per_episode
    transform: Callable | None


def sample_index(spec: ReadSpec, cache: str, eps: np.ndarray, local: np.ndarray) -> tuple[int, np.ndarray]:
    """How samples ``local`` of a block come out of one cache's block rows ([R, ...], episodes
    ``eps`` back to back): view the rows as [n, -1] and take rows ``index`` [k] of that view.

    unit="episode": n = episodes (a row="frame" cache's F rows form one sample row);
    unit="row": n = R for frame caches, episodes for row="episode" caches (repeated per frame)."""
    sl = spec.slices[cache]
    if spec.per_episode:
        return len(eps), local
    if many_rows(sl.row):
        return int(sl.length[eps].sum()), local
    frame = [c for c, s in spec.slices.items() if many_rows(s.row)]
    frames = spec.slices[frame[0]].length[eps] if frame else np.ones(len(eps), np.int64)
    return len(eps), np.repeat(np.arange(len(eps)), frames)[local]


def sample_shape(spec: ReadSpec, cache: str, row_shape: tuple) -> tuple:
    return (spec.frames[cache], *row_shape) if spec.per_episode and many_rows(spec.slices[cache].row) else tuple(row_shape)


class BlockReader:
    """Reads the rows of a block of joined episodes ({"<cache>.<array>": [R, ...]}); per process."""

    def __init__(self, spec: ReadSpec, held: Mapping[str, HeldRows]):
        self.spec, self.held = spec, held
        self._disk: dict[str, DiskRows] = {}

    def _rows(self, cache: str, eps: np.ndarray, alloc: Alloc) -> dict[str, np.ndarray]:
        alloc = _keyed(alloc, cache)
        if cache in self.held:
            return self.held[cache].gather(eps, alloc)
        if cache not in self._disk:
            self._disk[cache] = DiskRows(self.spec.paths[cache], self.spec.arrays[cache])
        sl, disk = self.spec.slices[cache], self._disk[cache]
        parts = sl.part[eps]
        if (parts == parts[0]).all():  # the anchor, and any cache laid out like it: one part
            return disk.read(sl.parts[parts[0]], sl.start[eps], sl.length[eps], alloc)
        dst = np.concatenate([[0], np.cumsum(sl.length[eps])])
        pieces = [(sel, disk.read(sl.parts[p], sl.start[eps[sel]], sl.length[eps[sel]])) for p in np.unique(parts) for sel in [np.flatnonzero(parts == p)]]
        out = {}
        for name in self.spec.arrays[cache]:
            first = pieces[0][1][name]
            res = alloc(name, (int(dst[-1]),) + first.shape[1:], first.dtype)
            for sel, got in pieces:
                res[np.concatenate([np.arange(dst[i], dst[i + 1]) for i in sel])] = got[name]
            out[name] = res
        return out

    def rows(self, eps: np.ndarray, alloc: Alloc = fresh) -> dict[str, np.ndarray]:
        """Every selected array's rows for episodes ``eps`` (kept indices, storage order), each from
        ``alloc("<cache>.<array>", shape, dtype)``."""
        out = {}
        for cache in self.spec.arrays:
            for name, a in self._rows(cache, eps, alloc).items():
                out[f"{cache}.{name}"] = a
        return out

    def samples(self, eps: np.ndarray, local: np.ndarray) -> dict[str, np.ndarray]:
        """Samples ``local`` of the block as numpy arrays [k, *sample_shape], transformed if asked."""
        samples = {}
        for key, rows in self.rows(eps).items():
            cache = key.split(".", 1)[0]
            n, index = sample_index(self.spec, cache, eps, local)
            samples[key] = rows.reshape(n, -1)[index].reshape(len(local), *sample_shape(self.spec, cache, rows.shape[1:]))
        if self.spec.transform is None:
            return samples
        return _stack([self.spec.transform({k: v[i] for k, v in samples.items()}) for i in range(len(local))])

    def close(self) -> None:
        for d in self._disk.values():
            d.close()
        self._disk.clear()


def _keyed(alloc: Alloc, cache: str) -> Alloc:
    return lambda name, shape, dtype: alloc(f"{cache}.{name}", shape, dtype)


class TaskStream(IterableDataset):
    """Yields (task index, kind, payload) for this worker's share of the tasks (every
    num_workers-th): kind "rows": payload (slot, {key: shape}), the block's rows in slot ``slot``
    of ``pool``, to be cut into samples and the slot released by the consumer; kind "samples":
    payload {key: tensor}, transformed samples. Readers are opened inside ``__iter__``, i.e. in
    the worker, so no zarr/HDF5 handle crosses a fork."""

    def __init__(self, spec: ReadSpec, held: Mapping[str, HeldRows], plan: BlockPlan, tasks: list[Task], pool: BlockPool | None):
        self.spec, self.held, self.ep, self.ep_off, self.tasks, self.pool = spec, held, plan.ep, plan.ep_off, tasks, pool

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        reader = BlockReader(self.spec, self.held)
        try:
            for i in range(wid, len(self.tasks), nw):
                t = self.tasks[i]
                eps = self.ep[self.ep_off[t.block] : self.ep_off[t.block + 1]]
                if self.spec.transform is not None:
                    got = reader.samples(eps, t.local)
                    yield i, "samples", {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in got.items()}
                    continue
                slot = self.pool.acquire(wid)
                if slot is None:  # the consumer stopped early
                    return
                got = reader.rows(eps, lambda key, shape, dtype: self.pool.view(key, slot, shape, dtype))
                yield i, "rows", (slot, {k: tuple(v.shape) for k, v in got.items()})
        finally:
            reader.close()


def _stack(items: list[dict]) -> dict[str, np.ndarray]:
    """Transformed samples back into arrays; every sample must have the same keys, shapes and dtypes."""
    if not items:
        return {}
    keys = list(items[0])
    out = {}
    for k in keys:
        vals = []
        for i, it in enumerate(items):
            if list(it) != keys:
                raise ValueError(f"transform returned keys {sorted(it)} for one sample and {sorted(keys)} for another")
            vals.append(np.asarray(it[k]))
        first = vals[0]
        bad = [v for v in vals if v.shape != first.shape or v.dtype != first.dtype]
        if bad:
            raise ValueError(f"transform output {k!r}: samples differ in shape/dtype ({first.shape} {first.dtype} vs {bad[0].shape} {bad[0].dtype})")
        out[k] = np.stack(vals)
    return out
