"""Which samples a loader yields, and in which order: integers only, no IO.

A *block* is a run of whole episodes inside one part of the anchor cache (the joined cache with the
most bytes per episode), covering ``block_rows`` rows aligned to its stored chunks: the unit read
from disk in one go. Sample ids are block-major: block b owns ids ``sample_off[b]:sample_off[b+1]``.

An epoch's order for (seed, epoch) is: blocks in a seeded random order, cut into ``world_size``
equal contiguous ranges of samples (the last ``N % world_size`` samples are DROPPED, as
``DistributedSampler(drop_last=True)`` does, so every rank yields the same number of samples), then
each rank's samples pass through a simulated shuffle buffer. Simulating the buffer on sample ids
(instead of shuffling the data as it flows) is what makes the order independent of the number of
workers and of where the data come from (disk or memory), and lets a resumed epoch skip straight to
batch k: the samples still "in the buffer" at that point are known without reading anything.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlockPlan:
    """``ep`` [E]: kept-episode indices grouped by block, block b = ``ep[ep_off[b]:ep_off[b+1]]``
    in storage order; ``sample_ep`` / ``sample_row`` [N]: the episode (kept index) and the row within
    it of each sample id (row 0 when a sample is a whole episode)."""

    ep: np.ndarray  # [E] int64
    ep_off: np.ndarray  # [n_blocks + 1] int64
    sample_off: np.ndarray  # [n_blocks + 1] int64
    sample_ep: np.ndarray  # [N] int64
    sample_row: np.ndarray  # [N] int32

    @property
    def n_blocks(self) -> int:
        return len(self.ep_off) - 1

    @property
    def n_samples(self) -> int:
        return int(self.sample_off[-1])


def make_blocks(part: np.ndarray, start: np.ndarray, length: np.ndarray, block_rows: np.ndarray, per_episode: bool) -> BlockPlan:
    """Blocks of the anchor cache. ``part``/``start``/``length`` [E]: each kept episode's part index,
    first row and row count there; ``block_rows`` [n_parts]: rows per block in each part (whole
    chunks). An episode belongs to the block its first row falls in, so a block reads at most one
    episode's worth of rows past its chunks. ``per_episode``: one sample per episode, else per row."""
    key = start // block_rows[part]
    ep = np.lexsort((np.arange(len(part)), start, key, part)).astype(np.int64)  # part, block, row order
    brk = np.flatnonzero((np.diff(part[ep]) != 0) | (np.diff(key[ep]) != 0)) + 1
    ep_off = np.concatenate([[0], brk, [len(ep)]]).astype(np.int64) if len(ep) else np.zeros(1, np.int64)
    n_per_ep = np.ones(len(ep), np.int64) if per_episode else length[ep].astype(np.int64)
    cum = np.concatenate([[0], np.cumsum(n_per_ep)]).astype(np.int64)
    sample_off = cum[ep_off]
    sample_ep = np.repeat(ep, n_per_ep)
    sample_row = (np.arange(cum[-1]) - np.repeat(cum[:-1], n_per_ep)).astype(np.int32)
    return BlockPlan(ep=ep, ep_off=ep_off, sample_off=sample_off, sample_ep=sample_ep, sample_row=sample_row)


@dataclass(frozen=True)
class EpochOrder:
    """One rank's epoch: ``seq`` [n] its sample ids in read order (its blocks, each in storage order);
    ``out`` [n] positions into ``seq`` in the order they are yielded."""

    seq: np.ndarray
    out: np.ndarray


def buffer_order(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """The order a shuffle buffer of ``size`` yields a stream of ``n`` items: positions 0..n-1.

    Fill the buffer, then for each new item yield a uniformly chosen resident and put the new item
    in its place; drain the rest in random order. So ``out[t] < size + t``: an item is yielded
    at most ``size`` items after it was read, which bounds what a reader must hold.

    Computed without simulating the buffer (a Python loop cost ~3 us a batch): slot j holds item j
    until it is first chosen, then the item read at the last step that chose it, so step t yields
    ``size + t'`` for the previous step t' that chose the same slot, else the slot's first item.
    """
    size = min(size, n)
    if size <= 1:
        return np.arange(n, dtype=np.int64)
    m = n - size
    picks = rng.integers(0, size, m)  # the slot chosen at each step
    by_slot = np.argsort(picks, kind="stable")  # steps grouped by slot, in step order
    same = picks[by_slot[1:]] == picks[by_slot[:-1]]
    prev = np.full(m, -1, np.int64)
    prev[by_slot[1:][same]] = by_slot[:-1][same]
    out = np.empty(n, np.int64)
    out[:m] = np.where(prev >= 0, size + prev, picks)
    buf = np.arange(size, dtype=np.int64)  # what each slot holds after the last step
    last = by_slot[np.flatnonzero(np.append(~same, True))] if m else by_slot
    buf[picks[last]] = size + last
    out[m:] = buf[rng.permutation(size)]
    return out


def epoch_order(plan: BlockPlan, seed: int, epoch: int, rank: int, world_size: int, shuffle: bool, buffer: int) -> EpochOrder:
    counts = np.diff(plan.sample_off)
    blocks = np.random.default_rng([seed, epoch]).permutation(plan.n_blocks) if shuffle else np.arange(plan.n_blocks)
    lens = counts[blocks]
    first = np.repeat(plan.sample_off[blocks] - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
    seq = first + np.arange(int(lens.sum()), dtype=np.int64)  # the blocks' sample ids, concatenated
    n = len(seq) // world_size
    seq = seq[rank * n : (rank + 1) * n]
    if not shuffle:
        return EpochOrder(seq, np.arange(n, dtype=np.int64))
    return EpochOrder(seq, buffer_order(n, buffer, np.random.default_rng([seed, epoch, 1 + rank])))


@dataclass(frozen=True)
class Task:
    """Read one block; keep its samples ``local`` (indices within the block), which go to
    positions ``pos`` of the rank's ``seq``."""

    block: int
    local: np.ndarray  # [k] int64
    pos: np.ndarray  # [k] int64


def schedule(plan: BlockPlan, order: EpochOrder, first: int, end: int) -> list[Task]:
    """The block reads, in ``seq`` order, that yield outputs ``first:end`` (a resumed or truncated
    epoch skips blocks with nothing left to yield)."""
    n = len(order.seq)
    wanted = np.zeros(n, bool)
    wanted[order.out[first:end]] = True
    block = np.searchsorted(plan.sample_off, order.seq, side="right") - 1
    cuts = np.concatenate([[0], np.flatnonzero(np.diff(block)) + 1, [n]]) if n else np.zeros(1, np.int64)
    tasks = []
    for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
        pos = np.arange(a, b, dtype=np.int64)[wanted[a:b]]
        if len(pos):
            blk = int(block[a])
            tasks.append(Task(blk, order.seq[pos] - plan.sample_off[blk], pos))
    return tasks
