"""The ``velocity`` stage: per-step planar velocities, OpenVLA's action, goal and instruction,
checked against the shards' own columns (read independently with pyarrow)."""
from __future__ import annotations


import numpy as np
import pyarrow.parquet as pq
import pytest

from navcache.cache_specs import open_cache
from navcache.pipeline.config import config_from_dict
from navcache.pipeline.errors import ConfigError
from navcache.pipeline.runner import ExtractOptions, extract
from navcache.pipeline.sources import make_source
from navcache.pipeline.sources.vamos import parse_goal
from navcache.pipeline.stages.velocity import VelocitySettings, VelocityStage, encode_text, velocities
from tests.pipeline.test_vamos_source import sample, write


def test_velocities_pad_cut_and_scale():
    path = np.array([[0, 0, 0], [1, 0, 0], [1.5, 0.5, 0], [1.5, 1.5, 0]], float)
    v, valid = velocities(path, 5, 0.5)
    assert v.dtype == np.float32 and v.shape == (5, 2)
    np.testing.assert_array_equal(v, [[2, 0], [1, 1], [0, 2], [0, 0], [0, 0]])
    assert valid.tolist() == [True, True, True, False, False]
    v, valid = velocities(path, 2, 1.0)
    np.testing.assert_array_equal(v, [[1, 0], [0.5, 0.5]]) and valid.all()


def test_instruction_bytes_cut_on_a_character_boundary():
    text, n = encode_text("go to the café", 14)
    assert n == len("go to the café".encode()) == 15
    assert bytes(text).rstrip(b"\0").decode() == "go to the caf"


def test_settings_name_the_field():
    for bad, field in (({"dt": 0}, "dt"), ({"horizon": 0}, "horizon"), ({"action_steps": 9}, "action_steps")):
        with pytest.raises(ValueError, match=field):
            VelocitySettings(**bad)


def test_demo_velocity_cache_matches_the_shards(demo_world, demo_cache_root):
    cache = open_cache(demo_cache_root / "demo_vamos" / "train" / "velocity")
    ids = cache.index["episode_id"].to_list()
    assert len(ids) == 96 and (cache.index["status"] == "ok").all()
    for shard in sorted((demo_world / "vamos" / "data").glob("train-*.parquet")):
        table = pq.read_table(shard, columns=["trajectory_3d", "lang_goal"]).to_pylist()
        for r in (0, len(table) - 1):
            row = cache[f"{shard.stem}:{r:06d}"]
            p = np.asarray(table[r]["trajectory_3d"])
            steps = np.diff(p[:, :2], axis=0)[:8]  # x forward, y left; dt = 1 step
            np.testing.assert_allclose(row["v"][: len(steps)], steps, atol=1e-6)
            assert row["v_valid"].sum() == len(steps) and not row["v"][len(steps):].any()
            np.testing.assert_allclose(row["action"], steps[0], atol=1e-6)
            assert tuple(row["goal"].tolist()) == parse_goal(table[r]["lang_goal"])
            text = bytes(row["instruction"][: int(row["instruction_bytes"])]).decode()
            assert text == table[r]["lang_goal"]


def test_action_mean_dt_and_quarantine_through_a_run(tmp_path):
    rows = [sample(i, curve=0.2 * i) for i in range(4)]
    rows.append({**sample(9), "lang_goal": "no point here", "text": None})
    write(tmp_path / "vamos/data/train-00000-of-00001.parquet", rows)
    project = config_from_dict({
        "cache_root": str(tmp_path / "cache"),
        "datasets": {"v": {"source": "vamos", "root": str(tmp_path / "vamos"), "splits": ["train"], "stages": ["velocity"]}},
        "stages": {"velocity": {"dt": 0.5, "action_steps": 3, "horizon": 4}},
    }, tmp_path)
    summary = extract(project, ExtractOptions("train"))
    assert not summary.errors and summary.quarantined == 1
    assert summary.sources["v/train"]["shards"]["data/train-00000-of-00001.parquet"]["axis_agreement"]["flu"] == 1.0
    cache = open_cache(tmp_path / "cache/v/train/velocity")
    bad = cache.index.filter(cache.index["status"] == "quarantined")
    assert "no <point" in bad["reason"][0]
    for i, r in enumerate(rows[:4]):
        row = cache[f"train-00000-of-00001:{i:06d}"]
        steps = np.diff(np.asarray(r["trajectory_3d"])[:, :2], axis=0) / 0.5
        np.testing.assert_allclose(row["v"], steps[:4], atol=1e-5)
        np.testing.assert_allclose(row["action"], steps[:3].mean(0), atol=1e-5)


def test_velocity_needs_a_path_source(tmp_path):
    from tests.helpers import make_navila

    src = make_source("navila", make_navila(tmp_path, n_episodes=1, size=16))
    with pytest.raises(ConfigError, match="velocity"):
        VelocityStage(VelocitySettings(), src, {})
