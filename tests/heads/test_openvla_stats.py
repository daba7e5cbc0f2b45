"""OpenVLA's dataset_statistics.json from the velocity cache, against an independent computation
from the shards; the streamed quantiles bit for bit against np.quantile; the action tokens."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from navcache.heads.exports.openvla_stats import (
    N_BINS, StreamingStats, action_to_tokens, export_openvla_stats, normalize_q99, openvla_statistics,
    tokens_to_action, unnormalize_q99,
)
from tests import helpers


def reference(actions: np.ndarray) -> dict:
    """OpenVLA's get_dataset_statistics on one array of actions (numpy, whole in memory)."""
    return {"mean": actions.mean(0).tolist(), "std": actions.std(0).tolist(), "max": actions.max(0).tolist(),
            "min": actions.min(0).tolist(), "q01": np.quantile(actions, 0.01, axis=0).tolist(),
            "q99": np.quantile(actions, 0.99, axis=0).tolist()}


def streamed(x: np.ndarray, cuts: list[int]) -> dict:
    s = StreamingStats(len(x), x.shape[1])
    for a, b in zip([0, *cuts], [*cuts, len(x)]):
        s.update(x[a:b])
    return s.result()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 2500), st.integers(0, 2**31 - 1), st.booleans(), st.lists(st.integers(1, 2499), max_size=6))
def test_streamed_statistics_equal_numpy(n, seed, ties, cuts):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)) * [0.3, 2.0] + [0.2, -1.0]
    if ties:  # many equal values (a robot standing still): ranks must still land on the same values
        x = np.round(x, 1)
    got = streamed(x, sorted({c for c in cuts if c < n}))
    want = reference(x)
    for k in ("min", "max", "q01", "q99"):
        assert got[k] == want[k], k  # bit for bit
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got["std"], want["std"], rtol=1e-10, atol=1e-15)


def test_feeding_more_or_fewer_rows_than_announced_fails():
    s = StreamingStats(3, 2)
    s.update(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="of the 3 announced"):
        s.result()
    with pytest.raises(ValueError, match="more than"):
        s.update(np.zeros((2, 2)))


def test_demo_statistics_match_the_shards(demo_world, demo_cache_root, tmp_path):
    out = tmp_path / "run" / "dataset_statistics.json"
    stats = export_openvla_stats(demo_cache_root / "demo_vamos/train/velocity", out)
    assert json.loads(out.read_text()) == stats
    assert list(stats) == ["vamos_dataset"]
    entry = stats["vamos_dataset"]
    assert set(entry) == {"action", "proprio", "num_transitions", "num_trajectories"}
    assert set(entry["action"]) == {"mean", "std", "max", "min", "q01", "q99", "mask"} and entry["action"]["mask"] == [True, True]
    assert entry["proprio"] == {k: [0.0, 0.0] for k in ("mean", "std", "max", "min", "q01", "q99")}
    # independently: the first step of every trajectory_3d, straight from the parquet shards
    first = []
    for shard in sorted((demo_world / "vamos/data").glob("train-*.parquet")):
        for traj in pq.read_table(shard, columns=["trajectory_3d"]).column(0).to_pylist():
            first.append(np.subtract(traj[1][:2], traj[0][:2]))
    actions = np.asarray(first, np.float32).astype(np.float64)  # the cache stores float32
    assert entry["num_transitions"] == entry["num_trajectories"] == len(actions) == 96
    want = reference(actions)
    for k in ("min", "max", "q01", "q99"):
        assert entry["action"][k] == want[k], k
    np.testing.assert_allclose(entry["action"]["mean"], want["mean"], rtol=1e-12)
    np.testing.assert_allclose(entry["action"]["std"], want["std"], rtol=1e-10)
    assert entry["action"]["q99"][0] > entry["action"]["q01"][0]  # the agent moves forward


def test_stats_refuse_a_frame_cache(demo_cache_root):
    with pytest.raises(ValueError, match="per-sample"):
        openvla_statistics(demo_cache_root / "demo_vamos/train/frame_features")


@pytest.mark.slow
def test_cli_export_builds_the_velocity_cache_first(tmp_path_factory, demo_world):
    cwd, _ = helpers.demo_job(tmp_path_factory, demo_world, "openvla_cli")
    r = helpers.run_cli("export", "openvla-stats", "stats.json", "-d", "demo_vamos", "-s", "val", "--key", "my_vamos", cwd=cwd)
    report = json.loads(r.stdout)
    stats = json.loads((cwd / "stats.json").read_text())
    assert list(stats) == ["my_vamos"] and report["num_transitions"] == stats["my_vamos"]["num_transitions"] == 32
    bad = helpers.run_cli("export", "openvla-stats", "x.json", "-d", "demo_navila", cwd=cwd, check=False)
    assert bad.returncode != 0 and "velocity" in bad.stderr


# -- tokens ---------------------------------------------------------------------------------------------


def test_tokens_round_trip_within_half_a_bin():
    vocab = 32000
    a = np.concatenate([np.linspace(-1, 1, 10001), np.random.default_rng(0).uniform(-1, 1, 5000), [-1.0, 1.0, 0.0]])
    ids = action_to_tokens(a, vocab)
    assert ids.min() >= vocab - N_BINS and ids.max() <= vocab - 1  # the last 256 ids of the vocabulary
    assert action_to_tokens(np.array([-1.0, 1.0, -5.0, 5.0]), vocab).tolist() == [vocab - 1, vocab - 256, vocab - 1, vocab - 256]
    back = tokens_to_action(ids, vocab)
    half_bin = (2 / (N_BINS - 1)) / 2
    assert np.abs(back - a).max() <= half_bin + 1e-12
    assert len(np.unique(back)) == N_BINS - 1  # the 255 bin centres
    inside = a < 1.0  # a = 1 is digitized past the last edge and decodes to the last centre
    assert np.array_equal(action_to_tokens(back, vocab)[inside], ids[inside])  # a centre lies in its own bin
    np.testing.assert_array_equal(tokens_to_action(action_to_tokens(back, vocab), vocab), back)


def test_q99_normalisation_round_trip():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 2)) * [0.2, 0.05] + [0.25, 0.0]
    stats = {**reference(x), "mask": [True, True]}
    n = normalize_q99(x, stats)
    assert n.min() >= -1 and n.max() <= 1
    inside = ((x >= stats["q01"]) & (x <= stats["q99"])).all(1)
    np.testing.assert_allclose(unnormalize_q99(n, stats)[inside], x[inside], atol=1e-7)
    ids = action_to_tokens(n, 32000)
    err = np.abs(unnormalize_q99(tokens_to_action(ids, 32000), stats) - x)[inside]
    width = np.subtract(stats["q99"], stats["q01"])
    assert (err <= width / (N_BINS - 1) / 2 + 1e-7).all()  # half a bin (1/255 on [-1, 1]) in metres per step
    masked = {**stats, "mask": [True, False]}
    np.testing.assert_array_equal(normalize_q99(x, masked)[:, 1], x[:, 1])
