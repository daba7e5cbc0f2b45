"""robot_meta cache and action chunks built at read time, checked against LeRobotDataset's own
delta_timestamps chunks (tests/fixtures/lerobot, v3.0 and v2.1) and a cache built through the CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from navcache.cache_specs import open_cache
from navcache.cache_specs.action_chunks import chunk_offsets, gather_chunks
from tests.helpers import run_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lerobot"


@pytest.mark.parametrize("name", ["v30_video", "v21_video"])  # lerobot 0.4.4 and 0.3.3's own chunks
def test_chunks_equal_lerobotdataset_delta_timestamps(name):
    ref = np.load(FIXTURES / f"{name}.reference.npz")
    offsets = chunk_offsets(delta_timestamps=[t / 10 for t in range(4)], fps=10)
    chunks, pad = gather_chunks(ref["action"], ref["episode_index"], offsets)
    np.testing.assert_array_equal(chunks, ref["action_chunk"])
    np.testing.assert_array_equal(pad, ref["action_is_pad"])


def test_negative_offsets_pad_before_the_episode_and_checks():
    values = np.arange(6)[:, None] * 1.0
    chunks, pad = gather_chunks(values, np.array([3, 3, 3, 8, 8, 8]), np.array([-1, 0, 2]))
    assert chunks[3, :, 0].tolist() == [3, 3, 5] and pad[3].tolist() == [True, False, False]
    assert chunks[1, :, 0].tolist() == [0, 1, 2] and pad[1].tolist() == [False, False, True]
    with pytest.raises(ValueError, match="not contiguous"):
        gather_chunks(values, np.array([1, 1, 2, 2, 1, 1]), np.arange(2))
    with pytest.raises(ValueError, match="not multiples of 1/10"):
        chunk_offsets(delta_timestamps=[0.0, 0.15], fps=10)
    assert chunk_offsets(3).tolist() == [0, 1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("name, table, row", [
    ("v30_video", "data/chunk-000/file-000.parquet", 8),           # episode 1 = rows 7..11 of the shared file
    ("v21_video", "data/chunk-000/episode_000001.parquet", 1),     # one file per episode
])
def test_robot_meta_cache_via_cli_strict(tmp_path, name, table, row):
    """The real fixture plus one damaged episode: the run completes, --strict exits 3, the cache holds
    the good episodes' tables exactly and names the bad one."""
    import shutil
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "ds"
    shutil.copytree(FIXTURES / name, root)
    path = root / table
    t = pq.read_table(path)
    action = t.column("action").to_pylist()
    action[row][2] = float("nan")
    pq.write_table(t.set_column(t.column_names.index("action"), "action", pa.array(action, t.schema.field("action").type)), path)
    (tmp_path / "navcache.yaml").write_text(yaml.safe_dump({"cache_root": "cache", "datasets": {
        "lr": {"source": "lerobot", "root": str(root), "splits": ["train"], "stages": ["robot-meta"], "part_size": 2}}}))
    p = run_cli("extract", "--split", "train", "--strict", cwd=tmp_path, check=False)
    assert p.returncode == 3, p.stdout + p.stderr
    c = open_cache(tmp_path / "cache/lr/train/robot_meta")
    status = dict(zip(c.index["episode_id"], c.index["status"]))
    assert status == {"episode_000000": "ok", "episode_000001": "quarantined", "episode_000002": "ok"}
    ref = np.load(FIXTURES / f"{name}.reference.npz")
    for eid, e in (("episode_000000", 0), ("episode_000002", 2)):
        rows = ref["episode_index"] == e
        got = c[eid]
        np.testing.assert_array_equal(got["action"], ref["action"][rows])
        np.testing.assert_array_equal(got["state"], ref["state"][rows])
        np.testing.assert_array_equal(got["frame_index"], ref["frame_index"][rows])
        np.testing.assert_array_equal(got["task_index"], ref["task_index"][rows])
