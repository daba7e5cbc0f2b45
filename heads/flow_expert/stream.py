"""The flow expert's streaming path: context caches through the house's streaming loader
(``cache_specs.make_loader``, ``unit="row"``), ``robot_meta`` held in memory, chunks built per batch.

Why rows, not episodes: LeRobot episodes differ in length (the demo's 21..45 frames, LIBERO's
~100..500) and ``unit="episode"`` needs one F for every episode. A row sample does not carry the
next H - 1 actions its chunk needs, so ``robot_meta`` is held in memory as a table
(``RobotTable``) and each batch's chunks are gathered from it by (episode, frame).

Memory bound of the table, per robot_meta frame: state and action normalised and zero-padded to
P = max_action_dim, the raw action and the frame before's, in float32, plus four int64s (the
episode's last row, frame_index, the context row's robot_meta row twice: per episode and flat),
4 (2P + 2A) + 32 bytes. Padded when built rather than per batch: a batch is then a few gathers
(per-batch fixed costs dominate at the demo's size, see BENCHMARKS.md). LIBERO (273,465 frames,
P = 32, A = 7): 4 * 78 + 32 = 344 B -> 94 MB, against ~19 GB of context features for two cameras
of DINOv3 ViT-L cls + 4x4 pooled fp16 tokens (34,816 B a frame a camera). So only the context
features stream; the table is the sound thing to hold.

Same samples as ``data.load_split`` (tested), on this condition, checked when the path is built:
every context cache holds the same frames of each kept episode, in the same order, and each of
them has a robot_meta frame (the memory path drops frames missing from a camera; this path
names the episode and says to use ``data_mode: memory``). Episodes are those ok in robot_meta and
every context cache (the loader's join). The order differs: blocks + shuffle buffer
(``cache_specs.stream_plan``) instead of a permutation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from navcache.cache_specs import make_loader, open_cache
from navcache.cache_specs.action_chunks import chunk_offsets

from .data import Normaliser, _rows_by_frame, pad_dims

#: the loader's name of robot_meta (joined, not read: it only filters episodes)
META = "meta"


def _ctx_name(i: int) -> str:
    return f"ctx{i}"


@dataclass(frozen=True)
class RobotTable:
    """robot_meta of one split in memory (rows in storage order, N rows), laid out so that a batch
    is a handful of numpy gathers (no per-sample Python), and for each kept episode the robot_meta
    row of each of its context rows.

    state [N, P] f32 normalised and zero-padded to P = max_action_dim; actions [N, P] idem;
    actions_raw [N, A] f32; prev_action [N, A] f32 raw, the row before's action (NaN on an
    episode's first row); last [N] int64: last row of each row's episode; frame_index [N] int64;
    ctx_rows {episode id: int64 [n] robot_meta row of the episode's context row j}, also flat:
    ``ctx_flat`` [M] (episodes in ``episodes`` order) from ``ctx_start`` [E]; offsets [H] >= 0."""

    state: np.ndarray
    actions: np.ndarray
    actions_raw: np.ndarray
    prev_action: np.ndarray
    last: np.ndarray
    frame_index: np.ndarray
    ctx_rows: dict[str, np.ndarray]
    offsets: np.ndarray
    state_dim: int
    action_dim: int

    def __post_init__(self):
        if (self.offsets < 0).any():
            raise ValueError(f"chunk offsets must be >= 0, got {self.offsets.tolist()}")
        eps = list(self.ctx_rows)
        object.__setattr__(self, "episodes", {e: i for i, e in enumerate(eps)})
        lengths = np.array([len(self.ctx_rows[e]) for e in eps], np.int64)
        object.__setattr__(self, "ctx_start", np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
        object.__setattr__(self, "ctx_flat", np.concatenate([self.ctx_rows[e] for e in eps]) if eps else np.zeros(0, np.int64))

    @property
    def nbytes(self) -> int:
        arrays = (self.state, self.actions, self.actions_raw, self.prev_action, self.last, self.frame_index, self.ctx_flat, self.ctx_start)
        return sum(a.nbytes for a in arrays) + sum(r.nbytes for r in self.ctx_rows.values())

    def rows(self, episode_ids, frame: np.ndarray) -> np.ndarray:
        """int64 [B] robot_meta rows of context rows ``frame`` [B] (row within the episode) of ``episode_ids``."""
        ep = np.fromiter(map(self.episodes.__getitem__, episode_ids), np.int64, len(frame))
        return self.ctx_flat.take(self.ctx_start.take(ep) + frame)

    def chunks(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The robot half of a batch for robot_meta ``rows`` [B], as ``load_split`` gives it:
        state [B, P], actions [B, H, P] (normalised, zero-padded), is_pad [B, H], actions_raw
        [B, H, A], prev_action [B, A] (NaN on an episode's first frame).

        Per row what ``gather_chunks`` does for whole episodes: offsets clamped to the row's
        episode, ``is_pad`` outside it. Normalising and padding are per row, so gathering
        normalised padded rows gives the values ``load_split`` normalises after gathering."""
        # ndarray.take, not a[idx]: a quarter of the time of fancy indexing at batch sizes
        q = rows[:, None] + self.offsets  # offsets >= 0 and rows >= the episode's first: only the end clamps
        last = self.last.take(rows)[:, None]
        is_pad = q > last
        np.minimum(q, last, out=q)
        return {"state": torch.from_numpy(self.state.take(rows, axis=0)), "actions": torch.from_numpy(self.actions.take(q, axis=0)),
                "is_pad": torch.from_numpy(is_pad), "actions_raw": torch.from_numpy(self.actions_raw.take(q, axis=0)),
                "prev_action": torch.from_numpy(self.prev_action.take(rows, axis=0))}


def robot_table(cfg, split: str, stats: dict, episodes) -> RobotTable:
    """The table of ``split`` for ``episodes`` (the loader's kept ids); ValueError when the context
    caches disagree on an episode's frames or one has a frame robot_meta lacks."""
    with open_cache(cfg.cache_root, cfg.dataset, split, "robot_meta") as meta:
        start, length = meta.offsets()
        state, action = meta.load("state").astype(np.float32), meta.load("action").astype(np.float32)
        by_frame = _rows_by_frame(meta)
        frame_index = meta.load("frame_index").astype(np.int64)
        if state.shape[1] > cfg.max_action_dim or action.shape[1] > cfg.max_action_dim:
            raise ValueError(f"{meta.path}: state / action have {state.shape[1]} / {action.shape[1]} dims, more than max_action_dim = {cfg.max_action_dim}")
    lo = np.repeat(start, length).astype(np.int64)
    hi = lo + np.repeat(length, length)
    frames = [_context_frames(cfg, ds, split, episodes) for ds in cfg.contexts]
    ctx_rows = {}
    for e in episodes:
        fi = frames[0][e]
        for ds, other in zip(cfg.contexts[1:], frames[1:]):
            if not np.array_equal(other[e], fi):
                raise ValueError(f"episode {e!r}: context caches {cfg.contexts[0]!r} and {ds!r} hold different frames; "
                                 "the streaming path needs the same frames in every context cache (data_mode: memory joins them by frame)")
        table = by_frame[e]
        rows = np.where(fi < len(table), table[np.minimum(fi, len(table) - 1)], -1)
        if (rows < 0).any():
            raise ValueError(f"episode {e!r}: {cfg.context_cache} frames {fi[rows < 0][:5].tolist()} have no robot_meta frame "
                             "(the streaming path cannot drop them; data_mode: memory does)")
        ctx_rows[e] = rows
    st_n, act_n = Normaliser(cfg.normalization, stats["state"]), Normaliser(cfg.normalization, stats["actions"])
    prev = np.concatenate([np.full((1, action.shape[1]), np.nan, np.float32), action[:-1]])
    prev[start[length > 0]] = np.nan
    P = cfg.max_action_dim
    return RobotTable(pad_dims(st_n.normalise(state), P, "state"), pad_dims(act_n.normalise(action), P, "action"), action, prev, hi - 1,
                      frame_index, ctx_rows, chunk_offsets(cfg.horizon), int(state.shape[1]), int(action.shape[1]))


def _context_frames(cfg, dataset: str, split: str, episodes) -> dict[str, np.ndarray]:
    """{episode id: int64 [n] frame_index of each of its context rows} of one context cache."""
    with open_cache(cfg.cache_root, dataset, split, cfg.context_cache) as r:
        if "frame_index" not in r.array_names:
            raise ValueError(f"{r.path} has no frame_index array: the flow expert joins context rows to robot_meta frames by it")
        start, length = r.offsets()
        fi = np.asarray(r.array("frame_index")[:], np.int64)
        where = {e: (int(a), int(n)) for e, a, n in zip(r.episodes, start, length)}
    return {e: fi[where[e][0]:where[e][0] + where[e][1]] for e in episodes}


class FlowBatches:
    """A ``heads.batches.BatchSource`` of flow-expert batches read through a ``StreamingLoader``:
    {"context" [B, T, D] as cached (fp16; the task casts to f32 on the device), "state", "actions", "is_pad", "actions_raw", "prev_action" (as
    ``load_split``), "frame_index" [B] i64, "episode_id" [B] str}. Epoch, position and resuming
    are the loader's."""

    def __init__(self, loader, table: RobotTable, keys: list[str], max_dim: int):
        self.loader, self.table, self.keys, self.max_dim = loader, table, keys, max_dim

    @property
    def episodes(self) -> tuple[str, ...]:
        return self.loader.episodes

    @property
    def n_samples(self) -> int:
        """Samples of the split (every rank's)."""
        return self.loader.plan.n_samples

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def state_dict(self) -> dict[str, int]:
        return self.loader.state_dict()

    def load_state_dict(self, state) -> None:
        self.loader.load_state_dict(state)

    def __iter__(self):
        for b in self.loader:
            yield self.convert(b)

    def convert(self, b: dict) -> dict:
        """A loader batch (context rows) -> the model's batch."""
        n = len(b["episode_id"])
        parts = [b[k].numpy().reshape(n, -1, b[k].shape[-1]) for k in self.keys]
        # as cached (fp16): half the bytes to copy and to move to the device; the task casts it there
        context = torch.from_numpy(np.concatenate(parts, axis=1))
        rows = self.table.rows(b["episode_id"], b["frame"].numpy())
        return {"context": context, **self.table.chunks(rows), "frame_index": torch.from_numpy(self.table.frame_index.take(rows)),
                "episode_id": b["episode_id"]}


def stream_split(cfg, split: str, stats: dict, *, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1,
                 shuffle: bool = True, loader_mode: str = "stream") -> FlowBatches:
    """``split`` through the streaming loader: ``loader_mode`` "stream" reads the context caches from
    disk every epoch, "auto" holds those that fit ``cfg.memory_budget_mb`` with the working set."""
    caches = {META: open_cache(cfg.cache_root, cfg.dataset, split, "robot_meta")}
    caches.update({_ctx_name(i): open_cache(cfg.cache_root, ds, split, cfg.context_cache) for i, ds in enumerate(cfg.contexts)})
    for name in list(caches)[1:]:
        missing = [a for a in cfg.context_arrays if a not in caches[name].array_names]
        if missing:
            raise ValueError(f"{caches[name].path} has no array {missing[0]!r} (context_arrays; arrays: {', '.join(caches[name].array_names)})")
    dims = {caches[n].spec["arrays"][a]["shape"][-1] for n in list(caches)[1:] for a in cfg.context_arrays}
    if len(dims) != 1:
        raise ValueError(f"context_arrays {list(cfg.context_arrays)} of {list(cfg.contexts)} have different last dims {sorted(dims)}")
    arrays = {_ctx_name(i): list(cfg.context_arrays) for i in range(len(cfg.contexts))}
    loader = make_loader(caches, arrays, batch_size=batch_size, seed=seed, rank=rank, world_size=world, unit="row", shuffle=shuffle,
                         drop_last=False, mode=loader_mode, memory_budget=cfg.memory_budget_mb << 20, num_workers=cfg.num_workers,
                         shuffle_buffer=cfg.shuffle_buffer, pin_memory=False)
    table = robot_table(cfg, split, stats, loader.episodes)
    keys = [f"{_ctx_name(i)}.{a}" for i in range(len(cfg.contexts)) for a in cfg.context_arrays]
    return FlowBatches(loader, table, keys, cfg.max_action_dim)


def memory_bytes(cfg, split: str) -> int:
    """Bytes ``load_split`` holds for ``split``, from the manifests alone: float32 context tokens
    [N, T, D] and the robot arrays (state, chunks normalised and raw, is_pad, prev action)."""
    with open_cache(cfg.cache_root, cfg.dataset, split, "robot_meta") as m:
        n = int(m.manifest["counts"]["rows"])
        a = math.prod(m.spec["arrays"]["action"]["shape"])
    td = 0
    for ds in cfg.contexts:
        with open_cache(cfg.cache_root, ds, split, cfg.context_cache) as r:
            td += sum(math.prod(r.spec["arrays"][x]["shape"]) for x in cfg.context_arrays if x in r.spec["arrays"])
    h, p = cfg.horizon, cfg.max_action_dim
    return n * (4 * (td + p + h * p + h * a + a) + h)


def choose_mode(cfg) -> str:
    """"memory" or "stream": ``cfg.data_mode`` when forced, else memory while both splits fit the budget."""
    if cfg.data_mode != "auto":
        return cfg.data_mode
    return "memory" if sum(memory_bytes(cfg, s) for s in cfg.splits) <= cfg.memory_budget_mb << 20 else "stream"
