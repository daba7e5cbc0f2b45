"""Small real caches for the join and streaming tests: values encode (episode, frame), so every
sample a loader yields can be checked against its ``episode_id``."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from navcache.cache_specs.layout import PARTS, part_id
from navcache.cache_specs.manifest import finalize_cache
from navcache.cache_specs.parts import EpisodeResult, write_part
from navcache.cache_specs.spec import ArraySpec, CacheSpec

FEATS = CacheSpec(
    "t_feats",
    1,
    "frame",
    (ArraySpec("x", "float32", (3,)), ArraySpec("idx", "int64", ()), ArraySpec("flag", "bool", (2,))),
)
META = CacheSpec("t_meta", 1, "episode", (ArraySpec("y", "int64", ()), ArraySpec("t", "float16", (2,))))


def eid(e: int) -> str:
    return f"ep{e:04d}"


def num(episode_id: str) -> int:
    return int(episode_id[2:])


def feats_of(e: int, n: int) -> dict[str, np.ndarray]:
    f = np.arange(n)
    return {
        "x": np.stack([np.full(n, e), f, e * 10 + f], axis=1).astype(np.float32),
        "idx": (e * 100 + f).astype(np.int64),
        "flag": np.stack([f % 2 == 0, np.full(n, e % 3 == 0)], axis=1),
    }


def meta_of(e: int) -> dict[str, np.ndarray]:
    return {"y": np.int64(e), "t": np.array([e, -e], np.float16)}


def write_cache(path: Path, spec: CacheSpec, parts: Sequence[Sequence[int | tuple]], backend: str, frames=4, chunk_rows: int = 4) -> Path:
    """``parts``: per part, episode numbers (ok) or ("q", e) (quarantined) or (e, n_frames)."""
    expected = {}
    for i, eps in enumerate(parts):
        results = []
        for item in eps:
            if isinstance(item, tuple) and item[0] == "q":
                results.append(EpisodeResult(eid(item[1]), None, f"test quarantine {item[1]}"))
                continue
            e, n = item if isinstance(item, tuple) else (item, frames)
            arrays = feats_of(e, n) if spec.row == "frame" else meta_of(e)
            results.append(EpisodeResult(eid(e), arrays))
        write_part(path / PARTS, part_id(i), f"fp{i}", spec, {}, results, backend=backend, chunk_rows=chunk_rows)
        expected[part_id(i)] = f"fp{i}"
    finalize_cache(path, expected, {"stage": "test", "backend": backend})
    return path


def standard_pair(root: Path, backend: str, n: int = 60, frames: int = 4) -> tuple[Path, Path]:
    """feats: episodes 0..n-1 in uneven parts, 3 and 17 quarantined; meta: other part layout and
    order, 5 absent, 8 quarantined, 50 only in meta."""
    eps = list(range(n))
    feats_eps = [e if e not in (3, 17) else ("q", e) for e in eps]
    cuts = [0, 7, 20, 21, 38, n]
    feats = write_cache(root / "feats", FEATS, [feats_eps[a:b] for a, b in zip(cuts[:-1], cuts[1:])], backend, frames)
    meta_eps = [e for e in reversed(eps) if e != 5]
    meta_eps = [("q", e) if e == 8 else e for e in meta_eps] + [n + 50]
    meta = write_cache(root / "meta", META, [meta_eps[i : i + 13] for i in range(0, len(meta_eps), 13)], backend)
    return feats, meta


def kept_standard(n: int = 60) -> list[str]:
    return [eid(e) for e in range(n) if e not in (3, 17, 5, 8)]
