"""The demo LeRobot writer: layouts as LeRobot reads them, shared video files located by
timestamps, actions that reproduce the motion, byte-identical reruns."""
from __future__ import annotations

import hashlib
import json

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from navcache.pipeline.demo.lerobot_writer import CAMERAS, FPS, write_lerobot_dataset


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("lr")
    return {v: (root / v, write_lerobot_dataset(root / v, v, scale=0.5)) for v in ("v3.0", "v2.1")}


def _frames(path) -> list[float]:
    with av.open(str(path)) as c:
        return [float(f.time) for f in c.decode(c.streams.video[0])]


def test_v30_layout_and_video_segments(written):
    root, summary = written["v3.0"]
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == summary["episodes"] == 4
    assert set(CAMERAS) <= set(info["features"]) and {"observation.state", "action", "task_index"} <= set(info["features"])
    assert info["splits"] == {"train": "0:3", "val": "3:4"}
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert data.column("episode_index").to_pylist()[:eps[0]["length"]] == [0] * eps[0]["length"]
    for key in CAMERAS:
        by_file: dict[int, list] = {}
        for e in eps:
            assert e[f"videos/{key}/to_timestamp"] - e[f"videos/{key}/from_timestamp"] == pytest.approx(e["length"] / FPS)
            by_file.setdefault(e[f"videos/{key}/file_index"], []).append(e)
        assert len(by_file) == 2 and len(by_file[0]) == 3  # several episodes share one file
        for f, group in by_file.items():
            times = _frames(root / f"videos/{key}/chunk-000/file-{f:03d}.mp4")
            assert len(times) == sum(e["length"] for e in group)
            assert times[-1] == pytest.approx(group[-1][f"videos/{key}/to_timestamp"] - 1 / FPS)
    stats = json.loads((root / "meta/stats.json").read_text())
    assert set(stats["action"]) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}


def test_actions_reproduce_the_motion(written):
    root, _ = written["v3.0"]
    t = pq.read_table(root / "data/chunk-000/file-000.parquet")
    state = np.array(t.column("observation.state").to_pylist())
    action = np.array(t.column("action").to_pylist())
    ep = np.array(t.column("episode_index").to_pylist())
    same = ep[1:] == ep[:-1]
    c, s = state[:-1, 2], state[:-1, 3]
    step = action[:-1] / FPS  # ego [forward, left] to world
    nxt = state[:-1, :2] + np.stack([c * step[:, 0] - s * step[:, 1], s * step[:, 0] + c * step[:, 1]], 1)
    np.testing.assert_allclose(nxt[same], state[1:, :2][same], atol=1e-4)
    assert np.abs(action).sum() > 0 and (action[np.r_[~same, True]] == 0).all()  # episodes end at rest


def test_v21_layout(written):
    root, summary = written["v2.1"]
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v2.1" and "{episode_chunk:03d}" in info["data_path"]
    eps = [json.loads(line) for line in (root / "meta/episodes.jsonl").read_text().splitlines()]
    tasks = [json.loads(line) for line in (root / "meta/tasks.jsonl").read_text().splitlines()]
    assert [e["episode_index"] for e in eps] == list(range(summary["episodes"]))
    assert {t["task"] for t in tasks} == {e["tasks"][0] for e in eps}
    for e in eps:
        table = pq.read_table(root / f"data/chunk-000/episode_{e['episode_index']:06d}.parquet")
        assert table.num_rows == e["length"]
        for key in CAMERAS:
            times = _frames(root / f"videos/chunk-000/{key}/episode_{e['episode_index']:06d}.mp4")
            assert len(times) == e["length"] and times[0] == 0.0


def test_rerun_is_byte_identical(written, tmp_path):
    root, _ = written["v3.0"]
    write_lerobot_dataset(tmp_path / "again", "v3.0", scale=0.5)
    digest = lambda r: {p.relative_to(r): hashlib.sha256(p.read_bytes()).hexdigest() for p in r.rglob("*") if p.is_file()}  # noqa: E731
    assert digest(root) == digest(tmp_path / "again")
