"""A problem with an episode's source files is found once, at listing, and shared by every stage of
the dataset: ``rover-meta`` (which never opens a clip) and ``frame-features`` (which decodes it)
quarantine the same rover rows with the same reason, so their indexes agree."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from navcache.cache_specs import open_cache
from navcache.cache_specs.labels import ACTION, REASON, RISK
from navcache.pipeline.config import load_config
from navcache.pipeline.runner import ExtractOptions, extract
from navcache.pipeline.sources.rover import RoverSource

FRAMES = 12
TELEMETRY = [0.1, 0.0, 9.8, 0.0, 0.0, 0.1, 0.5, 0.0]
# clip id -> a fragment of the reason both indexes must give
BAD = {
    "missing": "missing video file",
    "empty": "empty video file (0 bytes)",
    "cut_mdat": "truncated video",
    "cut_early": "truncated video",
    "folder": "video path is not a regular file",
}
GOOD = ["good0", "good1"]


def write_mp4(path: Path, seed: int) -> Path:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (48, 48))
    rng = np.random.default_rng(seed)
    for _ in range(FRAMES):
        vw.write(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    vw.release()
    return path


def make_rover(root: Path) -> Path:
    clips = root / "clips"
    clips.mkdir(parents=True)
    for k, c in enumerate([*GOOD, "cut_mdat", "cut_early"]):
        write_mp4(clips / f"{c}.mp4", k)
    raw = (clips / "cut_mdat.mp4").read_bytes()
    (clips / "cut_mdat.mp4").write_bytes(raw[: int(len(raw) * 0.7)])
    (clips / "cut_early.mp4").write_bytes((clips / "cut_early.mp4").read_bytes()[:100])
    (clips / "empty.mp4").write_bytes(b"")
    (clips / "folder.mp4").mkdir()
    rows = [{"clip_id": c, "video": f"clips/{c}.mp4", "fps": 10.0, "n_frames": FRAMES, "telemetry": TELEMETRY,
             "risk": RISK[0], "reason": REASON[0], "action": ACTION[0], "weight": 1.0} for c in [*GOOD, *BAD]]
    pq.write_table(pa.Table.from_pylist(rows), root / "train.parquet")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("source_problems")
    root = make_rover(tmp / "rover")
    cfg = {"cache_root": str(tmp / "cache"),
           "datasets": {"rover": {"source": "rover", "root": str(root), "splits": ["train"],
                                  "stages": ["rover-meta", "frame-features"], "part_size": 4}},
           "stages": {"frame-features": {"encoder": {"model": str(tiny_model)}, "batch_size": 16}}}
    (tmp / "navcache.yaml").write_text(yaml.safe_dump(cfg))
    summary = extract(load_config(tmp / "navcache.yaml"), ExtractOptions("train"))
    assert not summary.errors, summary.errors
    return tmp, summary


def test_both_indexes_quarantine_the_same_rows_with_the_same_reason(run):
    tmp, summary = run
    meta = open_cache(tmp / "cache/rover/train/rover_meta")
    ff = open_cache(tmp / "cache/rover/train/frame_features")
    q_meta, q_ff = dict(meta.quarantined.iter_rows()), dict(ff.quarantined.iter_rows())
    assert q_meta == q_ff
    assert sorted(q_meta) == sorted(BAD)
    for clip, fragment in BAD.items():
        assert fragment in q_meta[clip] and f"{clip}.mp4" in q_meta[clip], q_meta[clip]
    assert meta.episodes == ff.episodes == GOOD
    by_stage = {s.stage: {q["episode_id"]: q["reason"] for q in s.quarantined} for s in summary.stages}
    assert by_stage["rover-meta"] == by_stage["frame-features"] == q_meta


def test_listing_finds_them_without_decoding(run):
    tmp, _ = run
    eps = {e.episode_id: e for e in RoverSource(tmp / "rover").episodes("train")}
    assert {k for k, e in eps.items() if e.quarantine} == set(BAD)
    assert all(eps[g].quarantine is None for g in GOOD)
