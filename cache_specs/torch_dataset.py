"""A torch ``Dataset`` over a cache's ok episodes (one item = one episode's arrays as tensors)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


class CacheDataset(Dataset):
    """Items are ``{name: tensor}`` for one episode; ``episode_id`` is added as a str.

    ``in_memory=True`` loads the chosen arrays once (trainers read at memory speed);
    ``in_memory=False`` reads lazily from the parts on each access (for caches larger than RAM).
    """

    def __init__(self, reader, arrays: Sequence[str] | None = None, in_memory: bool = True):
        self.reader = reader
        self.names = list(arrays or reader.array_names)
        self.ids = reader.episodes
        self.start, self.length = reader.offsets()
        self.row = reader.spec["row"]
        self._mem = {n: torch.from_numpy(np.ascontiguousarray(reader.load(n))) for n in self.names} if in_memory else None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        s, n = int(self.start[i]), int(self.length[i])
        if self._mem is not None:
            item = {k: v[s] if self.row == "episode" else v[s : s + n] for k, v in self._mem.items()}
        else:
            item = {k: torch.from_numpy(self.reader.array(k)[s : s + n]) for k in self.names}
            if self.row == "episode":
                item = {k: v[0] for k, v in item.items()}
        item["episode_id"] = self.ids[i]
        return item
