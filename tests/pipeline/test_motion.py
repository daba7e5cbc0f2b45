"""Egocentric deltas and NaVILA-aligned bins, against analytic cases and a reconstruction property."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from navcache.pipeline.motion import DIST_EDGES_M, YAW_EDGES_DEG, bin_steps, egocentric_deltas, wrap_angle


def test_forward_step_facing_north_is_forward_in_egocentric_frame():
    poses = np.array([[1.0, 2.0, math.pi / 2], [1.0, 2.25, math.pi / 2]])
    np.testing.assert_allclose(egocentric_deltas(poses), [[0.25, 0.0, 0.0]], atol=1e-12)


def test_sidestep_to_the_left_is_positive_y():
    poses = np.array([[0.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    np.testing.assert_allclose(egocentric_deltas(poses), [[0.0, 0.5, 0.0]], atol=1e-12)


def test_yaw_change_wraps_across_pi():
    poses = np.array([[0, 0, math.radians(170)], [0, 0, math.radians(-170)]], dtype=float)
    assert math.isclose(egocentric_deltas(poses)[0, 2], math.radians(20), abs_tol=1e-9)
    assert wrap_angle(np.array([-math.pi]))[0] == math.pi  # (-pi, pi]


def test_bins_centre_on_navila_actions():
    deltas = np.array([[0, 0, 0], [0.25, 0, 0], [0.5, 0, 0], [0.75, 0, 0], [1.5, 0, 0]], dtype=float)
    dist, yaw = bin_steps(deltas)
    assert dist.tolist() == [0, 1, 2, 3, 4] and yaw.tolist() == [4] * 5
    turns = np.array([[0, 0, math.radians(a)] for a in (-60, -45, -30, -15, 0, 15, 30, 45, 60)])
    assert bin_steps(turns)[1].tolist() == list(range(9))
    assert len(DIST_EDGES_M) + 1 == 5 and len(YAW_EDGES_DEG) + 1 == 9


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-5, 5), st.floats(-5, 5), st.floats(-3.1, 3.1)), min_size=2, max_size=9))
def test_integrating_deltas_reconstructs_the_path(raw):
    poses = np.array(raw, dtype=float)
    d = egocentric_deltas(poses)
    x, y, yaw = poses[0]
    for (fwd, left, dyaw), want in zip(d, poses[1:]):
        x, y = x + fwd * math.cos(yaw) - left * math.sin(yaw), y + fwd * math.sin(yaw) + left * math.cos(yaw)
        yaw = float(wrap_angle(np.array([yaw + dyaw]))[0])
        np.testing.assert_allclose([x, y], want[:2], atol=1e-6)
        assert abs(float(wrap_angle(np.array([yaw - want[2]]))[0])) < 1e-6
