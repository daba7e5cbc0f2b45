"""``pipeline.keyframes`` against a plain brute force of Spatial-MLLM's space-aware sampling.

``_brute`` follows ``src/sampling/sa_sampling.py`` step by step with float32 arrays (the reference's
tensors are float32) and Python sets of voxel tuples; the fast implementation must give the same
positions, gains, coverage, threshold and voxel size on random small episodes, ties included.
"""
from __future__ import annotations

import contextlib
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from navcache.pipeline import keyframes as kf
from tests.pipeline.spatial_mllm_reference import greedy_picks

F32_TENTH = np.float32(0.1)
INV_20 = np.float32(1) / np.float32(20)


class Degenerate(Exception):
    """Where the reference crashes or divides by zero (the implementation raises ValueError)."""


# -- brute force ----------------------------------------------------------------------------------
def _brute_voxels(points, conf):
    p = np.asarray(points, np.float32)
    c = np.asarray(conf, np.float32)
    with np.errstate(invalid="ignore"):  # inf - inf: NaN threshold, nothing kept
        thr = np.percentile(c.reshape(-1), 50)
    keep = (c >= np.float32(thr)) & (c > F32_TENTH)  # torch compares a float32 tensor in float32
    if not keep.any():
        raise Degenerate("nothing kept")
    kept = p[keep]
    lo, hi = kept.min(axis=0), kept.max(axis=0)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise Degenerate("non-finite kept point")
    extent = hi - lo
    # on CUDA, ``tensor / 20`` multiplies by the float32 reciprocal of 20
    voxel = np.float32(min(extent[0], extent[1], extent[2]) * INV_20)
    if voxel == 0:
        raise Degenerate("zero voxel size")
    sets = []
    with np.errstate(over="ignore", invalid="ignore"):  # float32 grids beyond int64 (flagged below)
        for f in range(p.shape[0]):
            coords = np.floor((p[f][keep[f]] - lo) / voxel).astype(np.int64)
            sets.append({tuple(v) for v in coords.tolist()})
        top = np.floor(extent / voxel)
    too_fine = not np.isfinite(top).all() or np.prod(top.astype(object) + 1) >= 2**62
    return sets, float(np.float32(thr)), float(voxel), too_fine


def _score(sets, picks):
    covered, gains, coverage = set(), [], []
    everything = set().union(*sets)
    for f in picks:
        gains.append(len(sets[f] - covered))
        covered |= sets[f]
        coverage.append(len(covered) / len(everything))
    return gains, coverage, len(everything)


def _result(picks, gains, coverage, n, thr, voxel) -> dict:
    return {"picks": picks, "gains": gains, "coverage": coverage, "n_voxels": n, "threshold": thr, "voxel_size": voxel}


def _brute(points, conf, k):
    sets, thr, voxel, too_fine = _brute_voxels(points, conf)
    selected = greedy_picks(sets, k)
    gains, coverage, n = _score(sets, selected)
    return _result(selected, gains, coverage, n, thr, voxel), too_fine


def _brute_uniform(points, conf, k):
    sets, thr, voxel, too_fine = _brute_voxels(points, conf)
    s = len(sets)
    picks = sorted({int(i) for i in np.linspace(0, s - 1, min(k, s))})
    gains, coverage, n = _score(sets, picks)
    return _result(picks, gains, coverage, n, thr, voxel), too_fine


def _assert_same(sel: kf.Selection, want: dict) -> None:
    picks = np.asarray(want["picks"], np.int64)
    assert sel.positions.dtype == sel.pick_order.dtype == sel.gains.dtype == np.int64
    assert sel.coverage.dtype == np.float64
    np.testing.assert_array_equal(sel.positions, np.sort(picks))
    np.testing.assert_array_equal(sel.positions[np.argsort(sel.pick_order)], picks)  # pick order
    np.testing.assert_array_equal(sel.gains[np.argsort(sel.pick_order)], want["gains"])
    np.testing.assert_array_equal(sel.coverage, np.asarray(want["coverage"], np.float64))
    assert sel.n_voxels == want["n_voxels"]
    assert sel.threshold == want["threshold"]  # both are float32 values: exact
    assert sel.voxel_size == want["voxel_size"]


def _check(fn, brute, points, conf, k):
    try:
        want, too_fine = brute(points, conf, k)
    except Degenerate:
        with pytest.raises(ValueError):
            fn(points, conf, k)
        return
    if too_fine and points.dtype != np.float16:  # documented: float32 grids beyond int64 ids are refused
        with pytest.raises(ValueError, match="too fine"):
            fn(points, conf, k)
        return
    _assert_same(fn(points, conf, k), want)


@contextlib.contextmanager
def _sorted_dedupe():
    """Force the sort-based path for big grids."""
    saved, kf.DENSE_GRID_MAX = kf.DENSE_GRID_MAX, 0
    try:
        yield
    finally:
        kf.DENSE_GRID_MAX = saved


# -- random episodes ------------------------------------------------------------------------------
LATTICE = [-2.0, -1.0, -0.5, -0.0, 0.0, 0.05, 0.25, 0.3, 0.5, 1.0, 1.5, 3.0]
CONF_VALUES = [0.0, 0.05, float(np.float16(0.1)), float(F32_TENTH), 0.10009765625, 0.5, 1.0, 2.0, 3.0, -1.0]


@st.composite
def episodes(draw, allow_bad=True):
    s, h, w = draw(st.integers(1, 6)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    pdt = draw(st.sampled_from([np.float16, np.float32]))
    cdt = draw(st.sampled_from([np.float16, np.float32]))
    width = 16 if pdt == np.float16 else 32
    coord = st.one_of(
        st.sampled_from(LATTICE),  # exact voxel boundaries, duplicate points
        st.floats(-8, 8, width=width),
    )
    if allow_bad and draw(st.integers(0, 9)) == 0:
        coord = st.one_of(coord, st.just(float("nan")), st.just(float("inf")))
    points = draw(arrays(pdt, (s, h, w, 3), elements=coord))
    value = st.floats(0, 4, width=16 if cdt == np.float16 else 32)
    if draw(st.booleans()):
        value = st.sampled_from(CONF_VALUES)
    if allow_bad and draw(st.integers(0, 14)) == 0:
        value = st.one_of(value, st.just(float("nan")), st.just(float("inf")))
    conf = draw(arrays(cdt, (s, h, w), elements=value))
    if s > 1 and draw(st.booleans()):  # identical frames: ties
        a, b = draw(st.integers(0, s - 1)), draw(st.integers(0, s - 1))
        points[a], conf[a] = points[b], conf[b]
    k = draw(st.integers(0, s + 2))
    return points, conf, k


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(episodes())
def test_space_aware_matches_brute_force(ep):
    _check(kf.space_aware, _brute, *ep)


@SETTINGS
@given(episodes())
def test_uniform_matches_brute_force(ep):
    _check(kf.uniform, _brute_uniform, *ep)


@settings(max_examples=150, deadline=None)
@given(episodes())
def test_sorted_dedupe_path_matches_brute_force(ep):
    with _sorted_dedupe():
        _check(kf.space_aware, _brute, *ep)


@settings(max_examples=150, deadline=None)
@given(episodes(allow_bad=False))
def test_fp16_equals_its_float32_upcast(ep):
    points, conf, k = ep
    assume(points.dtype == np.float16)
    try:
        a = kf.space_aware(points, conf, k)
    except ValueError:
        with pytest.raises(ValueError):
            kf.space_aware(points.astype(np.float32), conf.astype(np.float32), k)
        return
    try:
        b = kf.space_aware(points.astype(np.float32), conf.astype(np.float32), k)
    except ValueError as e:
        assert "too fine" in str(e)  # fp16 grids are rank-compressed, float32 ones refused
        return
    for field in ("positions", "pick_order", "gains", "coverage"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert (a.n_voxels, a.voxel_size, a.threshold) == (b.n_voxels, b.voxel_size, b.threshold)


# -- pieces ---------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.sampled_from([np.float16, np.float32]), st.integers(1, 41), st.data())
def test_threshold_is_numpy_percentile_bit_for_bit(dtype, n, data):
    """Any bit pattern but NaN: negatives, -0, subnormals, infinities, odd and even sizes."""
    itype = np.uint16 if dtype == np.float16 else np.uint32
    bits = data.draw(arrays(itype, n))
    values = bits.view(dtype)
    values = np.where(np.isnan(values), dtype(1), values).astype(dtype)
    if data.draw(st.booleans()):
        values = np.abs(values)
    got = kf._threshold(values)
    with np.errstate(invalid="ignore"):
        want = np.float32(np.percentile(values.astype(np.float32), 50))
    assert got.dtype == np.float32
    assert (np.isnan(got) and np.isnan(want)) or got.tobytes() == want.tobytes() or got == want == 0


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 30), st.data())
def test_fp16_min_max_on_bits(n, data):
    values = data.draw(arrays(np.uint16, (3, n))).view(np.float16)
    lo, hi = kf._min_max(values)
    f = values.astype(np.float32)
    ok = ~np.isnan(f).any(axis=1)
    np.testing.assert_array_equal(np.isnan(lo) | np.isnan(hi), ~ok)  # a NaN shows in one of the bounds
    np.testing.assert_array_equal(lo[ok], f.min(axis=1)[ok])
    np.testing.assert_array_equal(hi[ok], f.max(axis=1)[ok])


def test_nan_confidence_is_refused():
    points = np.random.default_rng(0).normal(size=(2, 3, 3, 3)).astype(np.float32)
    conf = np.ones((2, 3, 3), np.float16)
    conf[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN confidence"):
        kf.space_aware(points, conf)


# -- targeted cases -------------------------------------------------------------------------------
def _frames(*frames, pad_to=None):
    """Frames given as lists of (x, y, z) -> points [S,1,W,3], conf [S,1,W] (1 on real points, 0 on padding)."""
    w = pad_to or max(len(f) for f in frames)
    points = np.zeros((len(frames), 1, w, 3), np.float32)
    conf = np.zeros((len(frames), 1, w), np.float32)
    for i, f in enumerate(frames):
        points[i, 0, : len(f)] = f
        conf[i, 0, : len(f)] = 1.0
    return points, conf


def test_hand_made_greedy_picks_and_early_stop():
    # voxel 0.05 (extent 1 on every axis); frame 1 is inside frame 0; frame 2 adds the far corner
    big = [(0, 0, 0), (0.5, 0, 0), (0, 0.5, 0), (0, 0, 0.5), (0.5, 0.5, 0.5)]
    points, conf = _frames(big, big[:2], [(1, 1, 1)], big[2:4] + [(1, 1, 1)])
    conf[:] = 1.0  # all kept: threshold 1
    sel = kf.space_aware(points, conf, k=4)
    # frame 0 (5 voxels, the padding point (0,0,0) repeats one) then frame 2 (1 new, lowest index
    # among frames 2 and 3 that both add the corner); then nothing is new: early stop
    np.testing.assert_array_equal(sel.positions, [0, 2])
    np.testing.assert_array_equal(sel.pick_order, [0, 1])
    np.testing.assert_array_equal(sel.gains, [5, 1])
    np.testing.assert_allclose(sel.coverage, [5 / 6, 1.0])
    assert (sel.n_voxels, sel.threshold) == (6, 1.0)
    assert sel.voxel_size == float(np.float32(1) * INV_20)


def test_ties_go_to_the_lowest_index_and_later_picks_can_come_first():
    a, b = [(0, 0, 0), (1, 0, 0)], [(0, 1, 1), (1, 1, 1), (0.5, 0.5, 0.5)]
    points, conf = _frames(a, b, b, a, pad_to=3)
    sel = kf.space_aware(points, conf, k=16)  # k > S
    np.testing.assert_array_equal(sel.positions, [0, 1])
    np.testing.assert_array_equal(sel.pick_order, [1, 0])  # frame 1 (3 voxels) first, then frame 0
    np.testing.assert_array_equal(sel.gains, [2, 3])  # aligned with positions
    np.testing.assert_allclose(sel.coverage, [3 / 5, 1.0])  # in pick order


def test_lazy_greedy_tie_with_a_stale_bound():
    """After frame 0, frames 1 and 2 both add 3; frame 2's stale bound (4) is looked at first, but
    frame 1 still wins the tie by index, as in the reference's ascending scan."""
    p = [(0, 0, 0), (1, 1, 1), (0.25, 0, 0), (0.5, 0, 0), (0.75, 0, 0)]
    a = [(0, 0.25, 0), (0, 0.5, 0), (0, 0.75, 0)]
    b = [(0.75, 0, 0), (0, 0, 0.25), (0, 0, 0.5), (0, 0, 0.75)]
    points, conf = _frames(p, a, b)
    sel = kf.space_aware(points, conf, k=2)
    np.testing.assert_array_equal(sel.positions, [0, 1])
    np.testing.assert_array_equal(sel.gains, [5, 3])
    _assert_same(kf.space_aware(points, conf, k=3), _brute(points, conf, 3)[0])


def test_k_larger_than_frames_and_k_zero():
    rng = np.random.default_rng(1)
    points, conf = rng.normal(size=(3, 4, 4, 3)).astype(np.float32), rng.uniform(0, 2, (3, 4, 4)).astype(np.float32)
    assert len(kf.space_aware(points, conf, 50).positions) <= 3
    for fn in (kf.space_aware, kf.uniform):
        empty = fn(points, conf, 0)
        assert empty.positions.shape == empty.gains.shape == empty.coverage.shape == (0,)
        with pytest.raises(ValueError, match="non-negative"):
            fn(points, conf, -1)
    np.testing.assert_array_equal(kf.uniform(points, conf, 50).positions, [0, 1, 2])


def test_uniform_on_the_same_voxels():
    rng = np.random.default_rng(2)
    points = rng.normal(size=(10, 6, 6, 3)).astype(np.float16)
    conf = rng.uniform(0, 3, (10, 6, 6)).astype(np.float16)
    uni, sa = kf.uniform(points, conf, 4), kf.space_aware(points, conf, 4)
    np.testing.assert_array_equal(uni.positions, [0, 3, 6, 9])
    np.testing.assert_array_equal(uni.pick_order, [0, 1, 2, 3])
    assert (uni.n_voxels, uni.voxel_size, uni.threshold) == (sa.n_voxels, sa.voxel_size, sa.threshold)
    assert sa.coverage[-1] >= uni.coverage[-1]  # greedy's first pick is the best single frame
    assert sa.gains.max() >= uni.gains.max()
    _assert_same(uni, _brute_uniform(points, conf, 4)[0])


@pytest.mark.parametrize(
    "conf_value, why",
    [(0.05, "no confident"), (0.1, "no confident"), (np.nan, "NaN")],
)
def test_error_when_nothing_is_kept(conf_value, why):
    points = np.random.default_rng(3).normal(size=(2, 3, 3, 3)).astype(np.float16)
    conf = np.full((2, 3, 3), conf_value, np.float32)
    for fn in (kf.space_aware, kf.uniform):
        with pytest.raises(ValueError, match=why):
            fn(points, conf, 4)
    with pytest.raises(ValueError, match="no confident"):
        kf.space_aware(points, np.full((2, 3, 3), 0.1, np.float16))  # fp16 0.1 < float32 0.1


def test_error_on_zero_extent_and_non_finite_kept_points():
    points, conf = _frames([(0, 0, 1), (1, 2, 1)], [(2, 0, 1)])  # every kept z is 1
    with pytest.raises(ValueError, match="zero extent along z"):
        kf.space_aware(points, conf)
    points, conf = _frames([(0, 0, 0), (1, 1, 1)], [(np.inf, 0, 0)])
    with pytest.raises(ValueError, match="non-finite"):
        kf.space_aware(points, conf)
    points[1, 0, 0] = np.nan
    conf[1] = 0.0  # the NaN point is not kept, and padding is conf 0 too: fine
    assert kf.space_aware(points, conf).n_voxels == 2


def test_voxel_size_uses_cuda_reciprocal_division():
    """``min_range / 20`` on CUDA is ``min_range * float32(1/20)``: for 0.05 that is one ulp below 0.05/20.

    The top point of the z range then falls in voxel 19, not 20, so frame 1 adds nothing.
    """
    r = np.float32(0.05)
    assert np.float32(r * INV_20) != np.float32(r / np.float32(20))
    points, conf = _frames([(0, 0, 0), (1, 1, 0), (0, 0, r)], [(0, 0, np.float32(0.97) * r)])
    sel = kf.space_aware(points, conf, 2)
    assert sel.voxel_size == float(np.float32(r * INV_20))
    np.testing.assert_array_equal(sel.positions, [0])
    assert sel.n_voxels == 3  # with a true division it would be 4: (0,0,20) and (0,0,19)
    _assert_same(sel, _brute(points, conf, 2)[0])


def test_hugely_thin_fp16_grid_is_rank_compressed():
    """z extent of one fp16 subnormal under x/y extents of 120000: ~1e28 cells, beyond int64 ids."""
    tiny = float(np.float16(2**-24))
    frames = (
        [(-6e4, -6e4, 0), (6e4, 6e4, tiny)],
        [(0, 0, 0), (59968, 0, 0)],
        [(0, 0, tiny), (6e4, 0, 0)],  # fp16 neighbours of frame 1's points in z and in x: new voxels
        [(59968, 0, 0), (0, 0, 0)],  # frame 1 again: adds nothing
    )
    points, conf = _frames(*frames)
    points = points.astype(np.float16)
    sel = kf.space_aware(points, conf, 4)
    np.testing.assert_array_equal(sel.gains, [2, 2, 2])
    assert sel.n_voxels == 6
    _assert_same(sel, _brute(points, conf, 4)[0])
    with pytest.raises(ValueError, match="too fine"):
        kf.space_aware(points.astype(np.float32), conf, 4)


def _room(s=12, h=24, w=24, seed=0, dtype=np.float16):
    """A camera walking through a box room: realistic voxel sets at test size."""
    rng = np.random.default_rng(seed)
    lo, hi = np.array([-4.0, -1.5, -3.0]), np.array([4.0, 1.5, 9.0])
    u, v = np.meshgrid((np.arange(w) - w / 2 + 0.5) / (w / 2), (np.arange(h) - h / 2 + 0.5) / (w / 2))
    rays = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3)
    points = np.empty((s, h * w, 3))
    for f in range(s):
        t = f / max(s - 1, 1)
        yaw = 2.5 * np.sin(2 * np.pi * t)
        rot = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
        d, c = rays @ rot.T, np.array([-2.5 + 5 * t, 0.0, -1.0 + 8 * t])
        with np.errstate(divide="ignore"):
            depth = np.where(d > 0, (hi - c) / d, (lo - c) / d).min(axis=1)
        points[f] = c + d * depth[:, None] + rng.normal(0, 0.01, d.shape)
    conf = 1 + np.exp(rng.normal(1.0, 1.0, (s, h, w)))
    return points.reshape(s, h, w, 3).astype(dtype), conf.astype(dtype)


@pytest.mark.parametrize("sorted_path", [False, True])
def test_room_episode_matches_brute_force(sorted_path):
    points, conf = _room()
    with _sorted_dedupe() if sorted_path else contextlib.nullcontext():
        sel = kf.space_aware(points, conf, 6)
    want, _ = _brute(points, conf, 6)
    _assert_same(sel, want)
    assert sel.n_voxels > 100 and len(sel.positions) == 6


def test_frame_voxels_match_the_brute_force_sets():
    """Ids are labels: compare, per voxel, which frames see it (the set system greedy works on)."""
    points, conf = _room(s=6, h=12, w=12, seed=4)
    vox = kf.frame_voxels(points, conf)
    sets, thr, voxel, _ = _brute_voxels(points, conf)

    def incidence(frame_sets):
        seen = {}
        for f, ids in enumerate(frame_sets):
            for i in ids:
                seen.setdefault(i, set()).add(f)
        return sorted(tuple(sorted(fs)) for fs in seen.values())

    assert incidence([v.tolist() for v in vox.sets]) == incidence(sets)
    assert all((np.diff(v) > 0).all() for v in vox.sets)
    assert (vox.threshold, vox.voxel_size, vox.n_voxels) == (thr, voxel, len(set().union(*sets)))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="expected points"):
        kf.space_aware(np.zeros((2, 3, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="expected points"):
        kf.space_aware(np.zeros((2, 3, 3, 3)), np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="no point"):
        kf.space_aware(np.zeros((0, 3, 3, 3)), np.zeros((0, 3, 3)))


# -- voxel sets through the geometry cache's rows ------------------------------------------------
def _via_rows(select, capacity=64):
    return lambda points, conf, k: select(kf.read_voxel_rows(kf.voxel_rows(points, conf, capacity)), k)


@SETTINGS
@given(episodes())
def test_greedy_on_cached_rows_matches_brute_force(ep):
    _check(_via_rows(kf.greedy), _brute, *ep)


@SETTINGS
@given(episodes())
def test_uniform_on_cached_rows_matches_brute_force(ep):
    _check(_via_rows(kf.uniform_on), _brute_uniform, *ep)


@pytest.mark.parametrize("sorted_path", [False, True])
def test_rows_of_a_float32_room_keep_the_reference_picks(sorted_path):
    points, conf = _room(s=16, h=48, w=48, seed=3, dtype=np.float32)
    with _sorted_dedupe() if sorted_path else contextlib.nullcontext():
        rows = kf.voxel_rows(points, conf, 48 * 48)
    assert rows["voxels"].dtype == np.int32 and rows["voxels"].shape == (16, 48 * 48)
    assert (rows["voxel_error"] == 0).all() and rows["voxel_union"][0] == rows["voxels"].max() + 1
    for f, n in enumerate(rows["voxel_count"]):
        assert (np.diff(rows["voxels"][f, :n]) > 0).all() and (rows["voxels"][f, n:] == -1).all()
    vox = kf.read_voxel_rows(rows)
    for k in (1, 5, 16, 40):
        _assert_same(kf.greedy(vox, k), _brute(points, conf, k)[0])
        _assert_same(kf.uniform_on(vox, k), _brute_uniform(points, conf, k)[0])


def test_a_frame_beyond_the_row_capacity_is_named_not_truncated():
    points, conf = _room(s=4, h=24, w=24, dtype=np.float32)
    rows = kf.voxel_rows(points, conf, 8)
    assert (rows["voxel_error"] == kf.TOO_MANY_VOXELS).all() and (rows["voxels"] == -1).all()
    most = int(rows["voxel_count"].max())
    assert most > 8
    with pytest.raises(kf.Degenerate, match=f"sees {most} voxels, more than the 8 .*stages.geometry.max_frame_voxels"):
        kf.read_voxel_rows(rows, "stages.geometry.max_frame_voxels")


@pytest.mark.parametrize(
    "conf_value, code",
    [(0.0, 2), (float("nan"), 1)],
)
def test_degenerate_maps_keep_their_reason_in_the_rows(conf_value, code):
    points, _ = _room(s=3, h=8, w=8, dtype=np.float32)
    rows = kf.voxel_rows(points, np.full((3, 8, 8), conf_value, np.float32), 16)
    assert (rows["voxel_error"] == code).all() and (rows["voxel_count"] == 0).all()
    with pytest.raises(kf.Degenerate, match=re.escape(kf.DEGENERATE[code])):
        kf.read_voxel_rows(rows)


def test_fp16_storage_moves_picks_that_the_cached_rows_keep():
    """The case the rows exist for: rounding the maps to fp16 changes the picks, the rows do not."""
    points, conf = _room(s=24, h=32, w=32, seed=0, dtype=np.float32)
    want, _ = _brute(points, conf, 8)
    from_rows = kf.greedy(kf.read_voxel_rows(kf.voxel_rows(points, conf, 1024)), 8)
    _assert_same(from_rows, want)
    rounded, _ = _brute(points.astype(np.float16), conf.astype(np.float16), 8)
    assert sorted(rounded["picks"]) != sorted(want["picks"])  # what the keyframes stage used to select from
