"""Training data larger than RAM: a torch loader over joined caches, streamed from disk or held in memory.

    from navcache.cache_specs import make_loader
    loader = make_loader({"feats": feats_dir, "meta": meta_dir},
                         {"feats": ["cls", "patch_pooled"], "meta": ["risk", "telemetry"]},
                         batch_size=32, seed=0, rank=rank, world_size=world, num_workers=4)
    loader.load_state_dict(ckpt["loader"])          # optional: resume mid-epoch
    for epoch in range(ckpt["loader"]["epoch"], epochs):
        loader.set_epoch(epoch)                      # same epoch as a loaded state: keeps its position
        for batch in loader:   # {"feats.cls": [B, F, D], "meta.risk": [B], ..., "episode_id": [B] str}
            ...; ckpt["loader"] = loader.state_dict()

A sample is one episode by default (``unit="episode"``: a row="frame" cache gives its rows stacked,
[F, ...], and every kept episode must have the same F) or one row (``unit="row"``: a row="episode"
cache's values repeat on each row of the episode; key ``"frame"`` holds the row's place in it).
Episodes are those ok in every cache (``join_caches``). Keys are ``"<cache>.<array>"``; a cache
given in ``caches`` but not in ``arrays`` only filters episodes.

Order: blocks (runs of whole episodes, aligned to the anchor cache's chunks, inside one part) in a
seeded order, per rank a shuffle buffer of ``shuffle_buffer`` samples (``stream_plan``). It depends
on (seed, epoch, rank, world_size, unit, shuffle, shuffle_buffer, block_rows) and on the caches'
layout, never on ``num_workers`` or ``mode``: memory and stream modes yield the same batches. Every
rank yields ``len(loader)`` batches; the last ``N % world_size`` samples of an epoch's order are
dropped (different ones each epoch). ``drop_last`` drops the last partial batch.

Memory: the main process holds at most ``shuffle_buffer + 2 * batch_size + one block`` samples
(a slot store); each worker holds about one block plus ``prefetch_factor`` results in flight.
``mode="auto"`` holds every cache in memory that fits ``memory_budget`` together with that working
set (smallest first) and streams the rest; ``"memory"`` / ``"stream"`` force one or the other.
When every selected cache is held (and there is no transform) a batch is gathered straight from
the held rows by sample id: the same batches, without blocks or a slot store.
"""
from __future__ import annotations

import dataclasses
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from .join import Join, join_caches
from .reader import CacheReader, open_cache
from .spec import many_rows
from .stream_plan import Task, epoch_order, make_blocks, schedule
from .stream_buffers import BatchBuffers, BlockPool
from .stream_read import HeldRows, ReadSpec, TaskStream, sample_index, sample_shape

MODES = ("auto", "memory", "stream")
UNITS = ("episode", "row")
#: default block size: chunk per-part open costs (~4 ms for a zarr part) are paid once per ~8 MiB
DEFAULT_BLOCK_BYTES = 8 << 20


@dataclass(frozen=True)
class LoaderConfig:
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    unit: Literal["episode", "row"] = "episode"
    shuffle: bool = True
    shuffle_buffer: int = 1024  # samples; part of the order, so a fixed number, not derived from RAM
    block_rows: int | None = None  # rows per block, rounded up to whole chunks; None: ~8 MiB of chunks
    memory_budget: int = 4 << 30  # bytes
    mode: Literal["auto", "memory", "stream"] = "auto"
    drop_last: bool = False
    num_workers: int = 0  # DataLoader worker processes reading blocks; unused when every cache is held
    prefetch_factor: int = 2  # blocks in flight per worker
    pin_memory: bool | None = None  # None: when CUDA is available
    transform: Callable[[dict], dict] | None = None  # picklable; numpy sample dict -> numpy dict

    def __post_init__(self):
        positive = ("batch_size", "world_size", "shuffle_buffer", "memory_budget", "prefetch_factor")
        for f in positive:
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 1:
                raise ValueError(f"LoaderConfig.{f} must be an int >= 1, got {getattr(self, f)!r}")
        for f in ("seed", "num_workers"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 0:
                raise ValueError(f"LoaderConfig.{f} must be an int >= 0, got {getattr(self, f)!r}")
        if not isinstance(self.rank, int) or not 0 <= self.rank < self.world_size:
            raise ValueError(f"LoaderConfig.rank must be in [0, world_size={self.world_size}), got {self.rank!r}")
        if self.block_rows is not None and (not isinstance(self.block_rows, int) or self.block_rows < 1):
            raise ValueError(f"LoaderConfig.block_rows must be None or an int >= 1, got {self.block_rows!r}")
        if self.mode not in MODES:
            raise ValueError(f"LoaderConfig.mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.unit not in UNITS:
            raise ValueError(f"LoaderConfig.unit must be one of {', '.join(UNITS)}; got {self.unit!r}")
        if self.transform is not None:
            try:
                pickle.dumps(self.transform)
            except Exception as e:
                raise ValueError(f"LoaderConfig.transform must be picklable (a module-level function or a functools.partial of one): {e}") from None


def make_loader(caches: Mapping[str, CacheReader | str | Path], arrays: Mapping[str, Sequence[str]], batch_size: int, seed: int = 0, **config: Any) -> "StreamingLoader":
    """A loader over the episodes ok in every cache; ``config``: the other ``LoaderConfig`` fields."""
    fields = [f.name for f in dataclasses.fields(LoaderConfig)]
    unknown = sorted(set(config) - set(fields))
    if unknown:
        raise TypeError(f"make_loader: unknown option(s) {', '.join(unknown)}; valid: {', '.join(fields)}")
    return StreamingLoader(caches, arrays, LoaderConfig(batch_size=batch_size, seed=seed, **config))


def _identity(x):
    return x


class _SlotStore:
    """Samples read but not yet yielded, in preallocated slots (per key a [capacity, numel] array).

    Hand-rolled rather than a list of per-sample tensors: one vectorised copy in per block and one
    gather per batch, and a hard memory bound (overflow means the plan's bound is wrong: an error).
    The bookkeeping is numpy too (a stack of free slots, a position -> slot table): a batch costs a
    few array operations whatever its size, not a dict lookup per sample. ``reset`` readies it for
    another epoch keeping its buffers, so their pages are faulted in once per loader, not per epoch.

    Positions arrive in increasing order (tasks follow the epoch's read order), so every position
    below ``filled`` has been put (or was not wanted): that is the membership test."""

    def __init__(self, capacity: int):
        self.capacity, self.store, self.shapes, self.dtypes = capacity, None, {}, {}
        self.batches = BatchBuffers()
        self.reset(0)

    def reset(self, n_positions: int) -> None:
        """Empty, for an epoch of ``n_positions`` positions (buffers kept)."""
        self.free = np.arange(self.capacity - 1, -1, -1, dtype=np.int64)  # free[:top]; put takes from the top: low slots first
        self.top = self.capacity
        self.slot_of = np.full(n_positions, -1, np.int64)
        self.filled = 0  # positions < filled have been put

    def put(self, pos: np.ndarray, data: Mapping[str, tuple[torch.Tensor, torch.Tensor | None, tuple]]) -> None:
        """``data[key] = (src [n, numel], rows of src to store [k] or None for all, sample shape)``."""
        if self.store is None:
            self.store = {k: np.empty((self.capacity, src.shape[1]), dtype=src.numpy().dtype) for k, (src, _, _) in data.items()}
            self.shapes = {k: shape for k, (_, _, shape) in data.items()}
            self.dtypes = {k: v.dtype for k, v in self.store.items()}
        if data.keys() != self.store.keys():
            raise ValueError(f"samples changed keys: {sorted(data)} vs {sorted(self.store)}")
        k = len(pos)
        if k > self.top:
            raise RuntimeError(f"internal: more than {self.capacity} samples pending; the shuffle buffer bound was violated")
        slots = self.free[self.top - k : self.top][::-1]
        self.top -= k
        contiguous = k > 0 and int(slots[-1]) - int(slots[0]) == k - 1 and bool((np.diff(slots) == 1).all())
        for key, (src, rows, shape) in data.items():
            dst, src = self.store[key], src.numpy()
            if shape != self.shapes[key] or src.dtype != dst.dtype:
                raise ValueError(f"{key!r}: samples of shape {shape} {src.dtype} after {self.shapes[key]} {dst.dtype}")
            # numpy, not torch: these copies run on the caller's thread; torch's intra-op threads
            # spin on a loaded machine (measured: 2x the CPU time of the whole read path)
            src = src if rows is None else src.take(rows.numpy(), axis=0)
            if contiguous:  # a fresh epoch fills slots 0, 1, ...: a slice copy, not a scatter
                dst[int(slots[0]) : int(slots[0]) + k] = src
            else:
                dst[slots] = src
        self.slot_of[pos] = slots
        if k:
            self.filled = max(self.filled, int(pos[-1]) + 1)

    def take(self, pos: np.ndarray, pin: bool) -> dict[str, torch.Tensor]:
        slots = self.slot_of.take(pos)
        n = len(slots)
        if pin:  # the CUDA host allocator recycles pinned buffers itself
            dst = {k: torch.empty((n, *self.shapes[k]), dtype=torch.from_numpy(v[:0]).dtype, pin_memory=True) for k, v in self.store.items()}
            views = {k: v.numpy() for k, v in dst.items()}
        else:  # recycled buffers: a fresh batch costs a page fault per 4 KiB (stream_buffers)
            views = self.batches.get(n, self.shapes, self.dtypes)
            dst = {k: torch.from_numpy(v) for k, v in views.items()}
        for k, v in self.store.items():
            # mode="wrap": the default "raise" gathers into a hidden temporary and copies it to
            # ``out`` (measured 5x the time); slots are in range by construction
            v.take(slots, axis=0, out=views[k].reshape(n, -1), mode="wrap")
        self.free[self.top : self.top + n] = slots[::-1]
        self.top += n
        return dst


class StreamingLoader:
    """See the module docstring. ``for batch in loader`` yields ``len(loader)`` batches of this rank."""

    def __init__(self, caches: Mapping[str, CacheReader | str | Path], arrays: Mapping[str, Sequence[str]], config: LoaderConfig):
        self.config = c = config
        readers = {n: r if isinstance(r, CacheReader) else open_cache(r) for n, r in caches.items()}
        for r in readers.values():
            r.check()  # a damaged part stops the run here, not mid-epoch (a listing per part; workers re-check what they open)
        self.arrays = _check_arrays(readers, arrays)
        self.join: Join = join_caches(readers)
        if not len(self.join):
            raise ValueError(f"no episode is ok in every cache ({', '.join(readers)}):\n{self.join.report}")
        self._ids = self.join.episodes
        dtypes = {n: {a: (np.dtype(s["dtype"]), tuple(s["shape"])) for a, s in readers[n].spec["arrays"].items()} for n in self.arrays}
        row_bytes = {n: sum(dt.itemsize * math.prod(sh) for a, (dt, sh) in dtypes[n].items() if a in self.arrays[n]) for n in self.arrays}
        frames = _frame_counts(self.join, self.arrays, c.unit)
        anchor = max(self.arrays, key=lambda n: row_bytes[n] * (frames.get(n, 1) if c.unit == "episode" else 1))
        self.plan = make_blocks(*_anchor_layout(anchor, readers[anchor], self.join, self.arrays[anchor], row_bytes[anchor], c.block_rows), per_episode=c.unit == "episode")
        ep_bytes = sum(self.join.slices[n].length * row_bytes[n] for n in self.arrays)  # [E] bytes per kept episode
        block_bytes = int(np.add.reduceat(ep_bytes[self.plan.ep], self.plan.ep_off[:-1]).max())
        sample_bytes = sum(row_bytes[n] * (frames.get(n, 1) if c.unit == "episode" else 1) for n in self.arrays)
        self._capacity = (c.shuffle_buffer if c.shuffle else 0) + 2 * c.batch_size + int(np.diff(self.plan.sample_off).max())
        # blocks: results in flight, a block being read per worker, the reader's decode buffers, and
        # what the allocator keeps of freed ones in zarr's I/O threads (measured: ~4 blocks)
        self.working_set_bytes = sample_bytes * (self._capacity + c.batch_size) + block_bytes * (2 * max(1, c.num_workers) * c.prefetch_factor + 8)
        cache_bytes = {n: int(row_bytes[n] * self.join.slices[n].length.sum()) for n in self.arrays}
        self.modes = _choose_modes(c, cache_bytes, self.working_set_bytes)
        self._spec = ReadSpec(
            paths={n: str(readers[n].path) for n in self.arrays},
            arrays=self.arrays,
            slices={n: self.join.slices[n] for n in self.arrays},
            per_episode=c.unit == "episode",
            frames=frames,
            transform=c.transform,
        )
        self._block_numel = _block_numel(self.plan, self.join, self.arrays, dtypes)
        self._held = {n: HeldRows(readers[n].path, self.arrays[n], self.join.slices[n], dtypes[n]) for n, m in self.modes.items() if m == "memory"}
        if c.pin_memory and not torch.cuda.is_available():
            raise ValueError("LoaderConfig.pin_memory=True needs CUDA (None pins exactly when CUDA is available)")
        self._pin = torch.cuda.is_available() if c.pin_memory is None else c.pin_memory
        self._epoch, self._done, self._resume = 0, 0, None
        self._spare_store: _SlotStore | None = None  # recycled across epochs (``__iter__``)
        self._spare_pool: BlockPool | None = None  # the in-process block buffer, idem (``_results``)
        self._sample_row = self.plan.sample_row.astype(np.int64)  # the "frame" key's dtype, converted once
        self._direct = self._held_index()
        self._direct_bufs = BatchBuffers()

    # -- the interface a training loop uses ---------------------------------------------------
    @property
    def episodes(self) -> tuple[str, ...]:
        """Ids of the kept episodes (ok in every cache), in the first cache's storage order."""
        return self._ids

    @property
    def join_report(self):
        return self.join.report

    @property
    def num_samples(self) -> int:
        """Samples this rank yields per epoch (before ``drop_last``)."""
        return self.plan.n_samples // self.config.world_size

    def __len__(self) -> int:
        n, b = self.num_samples, self.config.batch_size
        return n // b if self.config.drop_last else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order. Setting the epoch of a loaded ``state_dict`` keeps its position."""
        if not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"set_epoch: epoch must be an int >= 0, got {epoch!r}")
        if epoch != self._epoch:
            self._epoch, self._done, self._resume = int(epoch), 0, None

    def state_dict(self) -> dict[str, int]:
        """Plain ints: the epoch and how many batches of it were yielded, plus what must match on load."""
        c = self.config
        done = self._resume if self._resume is not None else self._done
        return {"epoch": self._epoch, "batches": done, "seed": c.seed, "rank": c.rank, "world_size": c.world_size, "batch_size": c.batch_size, "num_samples": self.num_samples}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """The next ``iter`` yields the batches of ``state["epoch"]`` from ``state["batches"]`` on."""
        mine = self.state_dict()
        for k in ("seed", "rank", "world_size", "batch_size", "num_samples"):
            if int(state[k]) != mine[k]:
                raise ValueError(f"loader state has {k}={state[k]}, this loader has {k}={mine[k]}; resuming would yield other samples")
        self._epoch, self._resume, self._done = int(state["epoch"]), int(state["batches"]), int(state["batches"])

    def __iter__(self) -> Iterator[dict]:
        c = self.config
        first_batch, self._resume = (self._resume or 0), None
        order = epoch_order(self.plan, c.seed, self._epoch, c.rank, c.world_size, c.shuffle, c.shuffle_buffer)
        end = len(self) * c.batch_size if c.drop_last else len(order.seq)
        first = min(first_batch * c.batch_size, end)
        self._done = first_batch
        if self._direct is not None:
            yield from self._iter_held(order, first, end)
            return
        results = self._results(schedule(self.plan, order, first, end))
        # the previous epoch's store and batch buffers, unless another iteration still holds them
        store, self._spare_store = (self._spare_store or _SlotStore(self._capacity)), None
        store.reset(len(order.seq))
        row, ids, sample_ep = c.unit == "row", self._ids, self.plan.sample_ep
        # per batch the last position it needs read: one vectorised pass, not a reduction a batch
        starts = np.arange(first, end, c.batch_size)
        needs = np.maximum.reduceat(order.out[first:end], starts - first).tolist() if len(starts) else []
        try:
            for t, need in zip(starts.tolist(), needs):
                want = order.out[t : t + c.batch_size]
                while store.filled <= need:
                    store.put(*next(results))
                batch: dict[str, Any] = store.take(want, self._pin)
                sid = order.seq.take(want)
                if row:
                    batch["frame"] = torch.from_numpy(self._sample_row.take(sid))
                batch["episode_id"] = list(map(ids.__getitem__, sample_ep.take(sid).tolist()))
                self._done += 1
                yield batch
        finally:
            results.close()
            self._spare_store = store

    def _held_index(self) -> dict[str, np.ndarray] | None:
        """The direct path, when every selected cache is held and there is no transform: per cache,
        int64 [N samples, R] rows of its ``HeldRows`` that make each sample (R = F for a frame
        cache's whole episode, else 1); None otherwise. 8 bytes per held row at most."""
        if self.config.transform is not None or any(m != "memory" for m in self.modes.values()):
            return None
        ep, spec = self.plan.sample_ep, self._spec
        out = {}
        for n in self.arrays:
            base = self._held[n].off[ep]
            if many_rows(spec.slices[n].row):
                out[n] = base[:, None] + (np.arange(spec.frames[n]) if spec.per_episode else self._sample_row[:, None])
            else:  # one row per episode, repeated on each of its samples
                out[n] = base[:, None]
        return out

    def _iter_held(self, order, first: int, end: int) -> Iterator[dict]:
        """Batches ``first:end`` of ``order`` gathered straight from the held rows: the samples the
        block path yields (same order, same data), without blocks, slots or a shuffle buffer to
        simulate; a batch is one ``take`` per array into recycled buffers."""
        c, spec, ids, sample_ep = self.config, self._spec, self._ids, self.plan.sample_ep
        shapes = {f"{n}.{a}": sample_shape(spec, n, rows.shape[1:]) for n in self.arrays for a, rows in self._held[n].rows.items()}
        dtypes = {f"{n}.{a}": rows.dtype for n in self.arrays for a, rows in self._held[n].rows.items()}
        for t in range(first, end, c.batch_size):
            sid = order.seq.take(order.out[t : t + c.batch_size])
            b = len(sid)
            if self._pin:
                out = {k: torch.empty((b, *shapes[k]), dtype=torch.from_numpy(np.empty(0, dtypes[k])).dtype, pin_memory=True) for k in shapes}
                views = {k: v.numpy() for k, v in out.items()}
            else:
                views = self._direct_bufs.get(b, shapes, dtypes)
                out = {k: torch.from_numpy(v) for k, v in views.items()}
            for n, index in self._direct.items():
                rows = index.take(sid, axis=0).ravel()
                for a, held in self._held[n].rows.items():
                    held.take(rows, axis=0, out=views[f"{n}.{a}"].reshape(len(rows), *held.shape[1:]), mode="wrap")
            batch: dict[str, Any] = out
            if c.unit == "row":
                batch["frame"] = torch.from_numpy(self._sample_row.take(sid))
            batch["episode_id"] = list(map(ids.__getitem__, sample_ep.take(sid).tolist()))
            self._done += 1
            yield batch

    def _results(self, tasks: list[Task]) -> Iterator[tuple[np.ndarray, dict]]:
        """(positions, {key: (source [n, numel], rows or None, sample shape)}) of each task, in task
        order, read here or by DataLoader workers."""
        streaming = any(m == "stream" for m in self.modes.values())
        workers = min(self.config.num_workers, len(tasks)) if streaming else 0  # held data: nothing to overlap
        # per worker: prefetch_factor results in flight + one being read; one suffices in-process,
        # and that one is recycled across epochs (its pages faulted in once), unless in use
        if workers == 0 and self._spare_pool is not None:
            pool, self._spare_pool = self._spare_pool.reopen(), None
        else:
            pool = BlockPool(self._block_numel, workers, self.config.prefetch_factor + 1 if workers else 1, shared=workers > 0)
        stream = TaskStream(self._spec, self._held, self.plan, tasks, pool)
        source = iter(stream) if workers == 0 else iter(
            DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=self.config.prefetch_factor, collate_fn=_identity)
        )
        early: dict[int, tuple] = {}  # results that arrive out of task order (DataLoader keeps order; this does not rely on it)
        try:
            for i, task in enumerate(tasks):
                while i not in early:
                    j, kind, data = next(source)
                    early[j] = (kind, data)
                kind, data = early.pop(i)
                slot = None
                if kind == "rows":
                    slot, shapes = data
                    data = {k: torch.from_numpy(pool.view(k, slot, shape)) for k, shape in shapes.items()}
                yield task.pos, self._samples(task, kind, data)
                # resumed: the consumer has copied what it needs out of the slot
                if slot is not None:
                    pool.release(slot)
        finally:
            pool.close()  # wakes workers waiting for a slot, so the DataLoader shuts down at once
            del source
            if not pool.shared:
                self._spare_pool = pool

    def _samples(self, task: Task, kind: str, data: dict[str, torch.Tensor]) -> dict[str, tuple]:
        if kind == "samples":
            return {k: (v.reshape(len(v), -1), None, tuple(v.shape[1:])) for k, v in data.items()}
        eps = self.plan.ep[self.plan.ep_off[task.block] : self.plan.ep_off[task.block + 1]]
        out = {}
        for key, rows in data.items():
            cache = key.split(".", 1)[0]
            n, index = sample_index(self._spec, cache, eps, task.local)
            whole = len(index) == n and bool((index == np.arange(n)).all())
            out[key] = (rows.reshape(n, -1), None if whole else torch.from_numpy(np.ascontiguousarray(index, np.int64)), sample_shape(self._spec, cache, tuple(rows.shape[1:])))
        return out


def _block_numel(plan, join: Join, arrays: Mapping[str, Sequence[str]], dtypes) -> dict[str, tuple[int, np.dtype]]:
    """{"<cache>.<array>": (elements, dtype)} of the largest block: the size of a block buffer."""
    out = {}
    for n, names in arrays.items():
        rows = np.add.reduceat(join.slices[n].length[plan.ep], plan.ep_off[:-1]) if plan.n_blocks else np.zeros(1, np.int64)
        for a in names:
            dt, shape = dtypes[n][a]
            out[f"{n}.{a}"] = (int(rows.max()) * math.prod(shape), dt)
    return out


def _check_arrays(readers: Mapping[str, CacheReader], arrays: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    out = {}
    for cache, names in arrays.items():
        if cache not in readers:
            raise KeyError(f"arrays names cache {cache!r}; caches: {', '.join(readers)}")
        names = tuple(names)
        for a in names:
            if a not in readers[cache].spec["arrays"]:
                raise KeyError(f"cache {cache!r} has no array {a!r}; arrays: {', '.join(readers[cache].array_names)}")
        if names:
            out[cache] = names
    if not out:
        raise ValueError("arrays selects nothing: give at least one array of one cache")
    return out


def _frame_counts(join: Join, arrays: Mapping[str, Sequence[str]], unit: str) -> dict[str, int]:
    """F of each selected row="frame" cache (unit="episode"); for unit="row", check the frame
    caches agree on every episode's row count."""
    frame = [n for n in arrays if many_rows(join.slices[n].row)]
    if unit == "row":
        for n in frame[1:]:
            bad = np.flatnonzero(join.slices[n].length != join.slices[frame[0]].length)
            if len(bad):
                raise ValueError(f"unit='row': caches {frame[0]!r} and {n!r} disagree on the rows of {len(bad)} episodes, e.g. {join.episodes[bad[0]]!r}")
        return {}
    out = {}
    for n in frame:
        lengths = join.slices[n].length
        values, counts = np.unique(lengths, return_counts=True)
        if len(values) != 1 or values[0] < 1:
            odd = join.episodes[int(np.flatnonzero(lengths != values[np.argmax(counts)])[0])] if len(values) > 1 else join.episodes[0]
            seen = ", ".join(f"{int(v)} rows x {int(k)}" for v, k in zip(values, counts))
            raise ValueError(f"cache {n!r} (row='frame'): unit='episode' needs the same number of frames F >= 1 in every kept episode; found {seen} (e.g. {odd!r}). Use unit='row' or fix the cache")
        out[n] = int(values[0])
    return out


def _anchor_layout(name: str, reader: CacheReader, join: Join, arrays: Sequence[str], row_bytes: int, block_rows: int | None):
    """(part, start, length, block rows per part) of the anchor cache, for ``make_blocks``.

    A writer uses one chunk length per cache (a part with fewer rows is one chunk), so it is read
    once, from the cache's largest part; a block is whole chunks: ``block_rows`` rounded up, or
    about ``DEFAULT_BLOCK_BYTES`` of the selected arrays."""
    sl = join.slices[name]
    sizes = reader.manifest.get("parts", {})
    big = max(sl.parts, key=lambda p: (sizes.get(p, {}).get("n_rows", 0), p))
    data = reader.open_part(big)
    try:
        chunk = max(data.chunk_rows(a) for a in arrays)
    finally:
        data.close()
    want = block_rows if block_rows is not None else max(1, DEFAULT_BLOCK_BYTES // max(1, row_bytes))
    rows = -(-want // chunk) * chunk
    return sl.part, sl.start, sl.length, np.full(len(sl.parts), rows, np.int64)


def _choose_modes(c: LoaderConfig, cache_bytes: Mapping[str, int], working_set: int) -> dict[str, str]:
    if c.mode != "auto":
        return {n: c.mode for n in cache_bytes}
    if working_set > c.memory_budget:
        raise ValueError(
            f"LoaderConfig.memory_budget={c.memory_budget} bytes is below the streaming working set (~{working_set} bytes "
            f"for shuffle_buffer={c.shuffle_buffer}, batch_size={c.batch_size}, block_rows={c.block_rows}, num_workers={c.num_workers}); "
            "raise memory_budget or lower those"
        )
    modes, used = {}, working_set
    for n in sorted(cache_bytes, key=lambda n: (cache_bytes[n], n)):
        fits = used + cache_bytes[n] <= c.memory_budget
        modes[n] = "memory" if fits else "stream"
        used += cache_bytes[n] if fits else 0
    return {n: modes[n] for n in cache_bytes}
