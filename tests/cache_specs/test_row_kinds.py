"""Row kinds: "pair" rows (covisibility's ordered keyframe pairs) are stored like "frame" rows and
read back per episode; an unknown kind is refused naming the valid ones."""
from __future__ import annotations

import numpy as np
import pytest

from navcache.cache_specs.reader import open_cache
from navcache.cache_specs.spec import ROW_KINDS, ArraySpec, CacheSpec, many_rows
from navcache.cache_specs.specs import get_spec
from navcache.cache_specs.testing.backends import build_cache, make_episode, quarantined

PAIR_SPEC = CacheSpec(name="conf_pairs", version=1, row="pair",
                      arrays=(ArraySpec("target", "float32", ("C",)), ArraySpec("frame_a", "int64", ())))


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_pair_rows_round_trip_per_episode(tmp_path, backend):
    eps = {"ep_a": 12, "ep_b": 2, "ep_c": 0}  # K=4 keyframes -> 12 ordered pairs; K=2 -> 2; K=1 -> none
    plan = [[make_episode(PAIR_SPEC, {"C": 5}, e, n, seed) for seed, (e, n) in enumerate(eps.items())],
            [quarantined("ep_q", "no confident points")]]
    build_cache(tmp_path / "c", backend, PAIR_SPEC, {"C": 5}, plan)
    r = open_cache(tmp_path / "c")
    assert r.spec["row"] == "pair"
    for res in plan[0]:
        got = r[res.episode_id]
        for name, want in res.arrays.items():
            np.testing.assert_array_equal(got[name], want)
            assert got[name].shape[0] == eps[res.episode_id]  # rows stay per pair, never squeezed like row="episode"


def test_row_kinds_and_covisibility_declares_pairs():
    assert ROW_KINDS == ("episode", "frame", "pair")
    assert [many_rows(k) for k in ROW_KINDS] == [False, True, True]
    assert get_spec("covisibility").row == "pair"
    with pytest.raises(ValueError, match="must be one of episode, frame, pair, got 'pairs'"):
        CacheSpec(name="x", version=1, row="pairs", arrays=(ArraySpec("a", "int64", ()),))
