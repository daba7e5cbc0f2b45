"""``load_split`` reduces the SIM features chunk by chunk (heads/sim_heads/data.py): the result equals a
plain reference (every row read whole, converted to float32, grid mean) on caches whose episodes
straddle stored chunks, span several parts, and include a quarantined clip absent from rover_meta."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from navcache.cache_specs import open_cache
from navcache.cache_specs.layout import PARTS, cache_dir, part_id
from navcache.cache_specs.manifest import finalize_cache
from navcache.cache_specs.parts import EpisodeResult, write_part
from navcache.cache_specs.specs import get_spec
from navcache.heads.sim_heads.data import META, load_split

F, G, D = 3, 2, 5
PARTS_OF = ([6, 5], [4])  # clips per part, per cache build: 3 parts in all


def _build(root, backend: str, chunk_rows: int) -> list[str]:
    rng = np.random.default_rng(1)
    ff, meta = get_spec("frame_features"), get_spec("rover_meta")
    dirs = {s: cache_dir(root, "r", "train", s) for s in ("frame_features", "rover_meta")}
    expected: dict = {s: {} for s in dirs}
    ids, p = [], 0
    for sizes in PARTS_OF:
        for n in sizes:
            names = [f"c{len(ids) + k:03d}" for k in range(n)]
            ids += names
            feats = [EpisodeResult(e, {"cls": rng.standard_normal((F, D)).astype(np.float16),
                                       "patch_pooled": rng.standard_normal((F, G, G, D)).astype(np.float16),
                                       "frame_index": np.arange(F, dtype=np.int64), "padded": np.zeros(F, bool)}) for e in names]
            feats[1] = EpisodeResult(names[1], None, f"unreadable clip {names[1]}") if p == 0 else feats[1]
            metas = [EpisodeResult(e, {"telemetry": rng.standard_normal(8).astype(np.float32), "risk": np.int64(k % 4),
                                       "reason": np.int64(k % 3), "action": np.int64(k % 6), "weight": np.float32(1 + k)})
                     for k, e in enumerate(names) if e != "c004"]  # one clip without labels: dropped by the join
            write_part(dirs["frame_features"] / PARTS, part_id(p), f"f{p}", ff, {"D": D, "G": G}, feats, backend=backend, chunk_rows=chunk_rows)
            write_part(dirs["rover_meta"] / PARTS, part_id(p), f"m{p}", meta, {}, metas, backend=backend, chunk_rows=chunk_rows)
            expected["frame_features"][part_id(p)], expected["rover_meta"][part_id(p)] = f"f{p}", f"m{p}"
            p += 1
    for s, d in dirs.items():
        finalize_cache(d, expected[s], {"stage": "test", "backend": backend})
    return ids


def _reference(root) -> tuple[list[str], np.ndarray, dict]:
    """Every ok clip of both caches, each read on its own, converted whole to float32."""
    with open_cache(root, "r", "train", "frame_features") as f, open_cache(root, "r", "train", "rover_meta") as m:
        ids = [e for e in f.episodes if e in set(m.episodes)]
        vis = np.stack([np.concatenate([f[e]["cls"].astype(np.float32), f[e]["patch_pooled"].astype(np.float32).mean(axis=(1, 2))], -1)
                        for e in ids])
        meta = {n: np.stack([m[e][n] for e in ids]) for n in META}
    return ids, vis, meta


@pytest.mark.parametrize("backend,chunk_rows", [("zarr", 4), ("zarr", 64), ("hdf5", 5)])
def test_load_split_equals_a_whole_row_reference(tmp_path, backend, chunk_rows):
    _build(tmp_path, backend, chunk_rows)
    arrays, info = load_split(tmp_path, "r", "train")
    ids, vis, meta = _reference(tmp_path)
    assert info["episodes"] == ids and "c001" not in ids and "c004" not in ids and len(ids) == 13
    assert arrays["vis_feats"].dtype == torch.float32
    np.testing.assert_array_equal(arrays["vis_feats"].numpy(), vis)
    for n in META:
        np.testing.assert_array_equal(arrays[n].numpy(), meta[n])
