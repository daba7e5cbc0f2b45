"""The local executor: keep the encoder busy.

    decode threads ──prepare()──▶ in-order window ──batch──▶ collate() (main thread)
                                                                  │ one batch ahead
                                                                  ▼
                                                 device thread: compute()
                                                                  │ one part complete
                                                                  ▼
                                                 writer thread: write_part (tmp + rename)

Episodes are consumed in order, so results are identical to a sequential run whatever the thread
timing. A failure in one episode quarantines that episode only. The device thread only runs
``compute``: while it holds the device with one batch, the main thread assembles the next
(``Stage.collate``, e.g. the ~20 MB frame concatenation) and files the previous batch's results,
so the device does not wait for the CPU between batches (issue 17).
"""
from __future__ import annotations

import logging
import sys
import traceback
from collections import deque
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from navcache.cache_specs.layout import PARTS
from navcache.cache_specs.parts import EpisodeResult, PartEpisodes, write_part

from ..config import RunConfig
from ..errors import Quarantine
from ..plan import PartPlan, StagePlan
from ..stages.base import Computed, Prepared

log = logging.getLogger("navcache")

#: progress callback: (episodes done, frames done) increments
Progress = Callable[[int, int], None]


@dataclass
class _Slot:
    part: int
    pos: int
    episode_id: str


class UpstreamChanged(RuntimeError):
    """An upstream part is not the one the plan expects (missing, replaced, or holding another
    version of the episode): building on it would silently mix inputs, so the stage fails."""


class _Upstream:
    """Opens the upstream parts a part's episodes live in (the plan says where) and checks each
    against the plan's fingerprints before any row is used."""

    def __init__(self, sp: StagePlan):
        self.dirs = sp.upstream_dirs
        self._open: dict[tuple[str, str], PartEpisodes] = {}

    def get(self, part: PartPlan, episode_id: str) -> tuple[dict, str | None]:
        arrays, reasons = {}, []
        for name, d in self.dirs.items():
            pid, pfp, efp = part.upstream[name][episode_id]
            key = (name, pid)
            if key not in self._open:
                try:
                    self._open[key] = PartEpisodes(Path(d) / PARTS / pid)
                except FileNotFoundError as e:
                    raise UpstreamChanged(f"upstream {name}: part {pid} is missing (planned with fingerprint {pfp[:12]}): {e}") from None
            up = self._open[key]
            if up.fingerprint != pfp or up.episode_fingerprint(episode_id) != efp:
                raise UpstreamChanged(f"upstream {name}: part {pid} was replaced since planning (episode {episode_id!r}); rerun the extract")
            a, why = up.episode(episode_id)
            if why is not None:
                reasons.append(f"upstream {name}: {why}")
            arrays[name] = a
        return arrays, ("; ".join(reasons) or None)

    def close(self):
        for p in self._open.values():
            p.close()


def single_threaded_ops() -> None:
    """Run a decode thread's torch ops (preprocessing) on that thread alone.

    The decode threads are the parallelism: with torch's intra-op pool on top, each of them opens
    an OpenMP team as wide as the cores (teams are per calling thread), so 3 threads on 2 cores
    ran 6+ workers: in py-spy the float steps of preprocessing took ~45% of the decode time inside
    the pipeline, against ~7% on one thread alone (issue 17).
    OpenMP's thread count is per thread, but torch also keeps a process-wide count that every
    thread reads the first time it runs a parallel op: ``decode_threads`` keeps the caller's.
    """
    import torch

    torch.set_num_threads(1)
    yield_to_device_feeder()


#: niceness added to each decode thread (Linux: per thread)
DECODE_NICE = 5


def yield_to_device_feeder() -> None:
    """Lower the calling decode thread's CPU priority (``DECODE_NICE``) below the main thread's.

    The main thread feeds the device: each batch it wakes from the encoder call, hands the next
    batch over and goes back to waiting. With more decode threads than cores it queued behind
    them for a scheduler slice at every wake-up, and the device idled meanwhile (issue 17:
    +0.07 efficiency on 2 cores). Decode threads still get every cycle the main thread leaves.
    """
    lower_thread_priority(DECODE_NICE)


def lower_thread_priority(by: int) -> None:
    """Add ``by`` to the calling thread's niceness (threads it starts later inherit it). Linux
    only (``setpriority`` on a thread id); elsewhere, or where a sandbox refuses, a no-op: it
    only changes speed. The value ends with the thread."""
    import os
    import threading

    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
    except OSError:
        pass


@contextmanager
def decode_threads(workers: int):
    """A pool of ``workers`` decode threads (``single_threaded_ops``) that leaves the calling thread's
    torch thread count, and the process-wide one later threads start with, as they were: without
    this, a caller whose first parallel op came after a decode thread started (an encoder's first
    forward, a trainer run after ``ensure``) would run on one core."""
    import torch

    keep = torch.get_num_threads()  # also fixes the calling thread's own count before any worker runs
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="navcache-decode", initializer=single_threaded_ops) as pool:
            yield pool
    finally:
        torch.set_num_threads(keep)


@contextmanager
def device_thread():
    """The one thread that runs ``Stage.compute`` (the encoder), at the caller's torch thread count.

    torch reads a process-wide thread count the first time a thread runs a parallel op, and the
    main thread sets it to 1 around its glue (``torch_threads``): so the device thread fixes its
    own count before the first batch is handed over (``_keep_threads`` runs to completion first).
    """
    import torch

    with ThreadPoolExecutor(1, thread_name_prefix="navcache-device") as device:
        device.submit(_keep_threads, torch.get_num_threads()).result()
        yield device


def _keep_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    torch.get_num_threads()  # initialises this thread's count now, while it is n


def build_parts(
    sp: StagePlan,
    parts: Iterable[PartPlan],
    backend: str,
    chunk_rows: int,
    run: RunConfig,
    progress: Progress | None = None,
    provenance: dict | None = None,
    on_written: Callable[[PartPlan], None] | None = None,
) -> list[dict]:
    """Build ``parts`` of ``sp`` and commit each atomically; return their part.json contents.

    ``parts`` may be an iterator: it is pulled only as the decode window reaches each part (a
    shared run claims parts that late, ``runner._build_shared``). ``on_written(part)`` runs on the
    writer thread right after each part is committed (a shared run releases its lease there).
    """
    stage = sp.stage
    stage.setup()
    upstream = _Upstream(sp)
    progress = progress or (lambda e, f: None)
    prov: dict = {}  # filled by the writer thread before its first write: off the path to the first batch
    parts_seen: list[PartPlan] = []  # grows as ``parts`` is pulled; indexed by _Slot.part
    results: list[list[EpisodeResult | None] | None] = []
    remaining: list[int] = []
    metas: list[dict] = []

    def write(p: PartPlan, episodes: list[EpisodeResult]) -> dict:
        if not prov:
            prov.update({"stage": sp.stage_name, **stage.provenance(), **(provenance or {})})
        meta = write_part(sp.cache_dir / PARTS, p.part_id, p.fingerprint, stage.spec(), dims, episodes, backend, chunk_rows, prov, p.episode_fps)
        if on_written is not None:
            on_written(p)
        return meta

    part_iter = iter(parts)
    queued: deque[tuple[_Slot, object]] = deque()  # episodes of pulled parts not yet submitted

    def pull_part() -> bool:
        """Take the next part from ``parts`` (a shared run claims it now); False when none is left."""
        p = next(part_iter, None)
        if p is None:
            return False
        p.want()  # a first extract hashes the part's inputs now (``PendingPart``)
        pi = len(parts_seen)
        parts_seen.append(p)
        results.append([None] * len(p.episodes))
        remaining.append(len(p.episodes))
        if not p.episodes and on_written is not None:
            on_written(p)  # nothing to build (never written, as before)
        queued.extend((_Slot(pi, k, ep.episode_id), ep) for k, ep in enumerate(p.episodes))
        return True

    writes: deque[Future] = deque()

    def prepare(pi: int, ep) -> Prepared | str:
        if ep.quarantine:
            return ep.quarantine
        try:
            up, why = upstream.get(parts_seen[pi], ep.episode_id) if sp.upstream_dirs else ({}, None)
            if why:
                return why
            return stage.prepare(ep, up)
        except UpstreamChanged:
            raise
        except Quarantine as q:
            return q.reason
        except Exception as e:  # noqa: BLE001 - an unexpected error in one episode must not lose the run
            log.debug("prepare failed for %s:\n%s", ep.episode_id, traceback.format_exc())
            return f"{type(e).__name__}: {e}"

    def finish(slot: _Slot, res: EpisodeResult, frames: int) -> None:
        results[slot.part][slot.pos] = res
        remaining[slot.part] -= 1
        progress(1, frames)
        if remaining[slot.part] == 0:
            while len(writes) >= run.pending_writes:
                metas.append(writes.popleft().result())
            writes.append(writer.submit(write, parts_seen[slot.part], results[slot.part]))
            results[slot.part] = None  # the writer holds the only reference now: memory stays flat in the dataset size

    inflight: deque[tuple[list[tuple[_Slot, Prepared]], Future]] = deque()

    def launch(batch: list[tuple[_Slot, Prepared]]) -> None:
        """Hand ``batch`` to the device thread; settle batches until at most this one is left:
        the device runs batch n while this thread collates n + 1 and files n - 1's results."""
        items = [b[1] for b in batch]
        try:
            collated = stage.collate(items)
        except Exception:  # noqa: BLE001 - compute collates again and the isolation below finds the episode
            collated = None
        inflight.append((batch, device.submit(_compute, stage, items, collated)))
        while len(inflight) > 1:
            settle(*inflight.popleft())

    def settle(batch: list[tuple[_Slot, Prepared]], fut: Future) -> None:
        try:
            outs = fut.result()
        except Exception as e:  # noqa: BLE001
            if len(batch) > 1:  # isolate the episode at fault (e.g. out of memory on one long video)
                for b in batch:
                    settle([b], device.submit(_compute, stage, [b[1]], None))
                return
            if isinstance(e, Quarantine):  # the stage's own diagnosis (e.g. OOM naming the frame count)
                reason = e.reason
            else:
                reason = "compute failed: " + ("out of memory" if "out of memory" in str(e).lower() else f"{type(e).__name__}: {e}")
            log.debug("compute failed for %s:\n%s", batch[0][0].episode_id, "".join(traceback.format_exception(e)))
            finish(batch[0][0], EpisodeResult(batch[0][0].episode_id, reason=reason), 0)
            return
        for (slot, item), got in zip(batch, outs):
            res = EpisodeResult(slot.episode_id, got.arrays, meta=got.meta) if isinstance(got, Computed) else EpisodeResult(slot.episode_id, got)
            finish(slot, res, item.cost)

    dims = stage.dims()
    with decode_threads(run.decode_workers) as pool, device_thread() as device, ThreadPoolExecutor(1, thread_name_prefix="navcache-write") as writer:
        try:
            window: deque[tuple[_Slot, Future]] = deque()
            batch: list[tuple[_Slot, Prepared]] = []
            # the first batches ramp up (1, 2, 4, ... items' worth, up to batch_cost): the device
            # starts on the first decoded episode instead of idling until a whole batch is decoded
            # (4 clips of 640x480 H.264: 0.8 s); deterministic, so reruns batch alike
            cost, target = 0, 1
            while True:
                while len(window) < run.prefetch_episodes:
                    if not queued:
                        # at most two parts in the window: decoding runs one part ahead of the
                        # encoder, and concurrent runs still split the parts (each claims late)
                        if window and window[-1][0].part > window[0][0].part:
                            break
                        if not pull_part():
                            break
                        continue
                    slot, ep = queued.popleft()
                    window.append((slot, pool.submit(prepare, slot.part, ep)))
                if not window:
                    break
                slot, fut = window.popleft()
                got = fut.result()
                if isinstance(got, str):
                    finish(slot, EpisodeResult(slot.episode_id, reason=got), 0)
                    continue
                batch.append((slot, got))
                cost += got.cost
                if cost >= min(target, stage.batch_cost):
                    launch(batch)
                    batch, cost, target = [], 0, 2 * cost
            if batch:
                launch(batch)
            while inflight:
                settle(*inflight.popleft())
            while writes:
                metas.append(writes.popleft().result())
        finally:
            upstream.close()
            stage.teardown()
    return metas


def _compute(stage, items: list[Prepared], collated):
    return stage.compute(items) if collated is None else stage.compute(items, collated)
