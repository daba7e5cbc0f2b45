"""Each distinct frame is encoded once per run (pipeline/stages/frame_features.py): the encoder
sees exactly the distinct frames (the sampled files, plus one black padding frame), and every
sample's arrays equal those of a run that encodes every row."""
from __future__ import annotations

import numpy as np
import pytest

from navcache.cache_specs import open_cache
from navcache.pipeline.config import load_config
from navcache.pipeline.encoders.hf_vision import HFVisionEncoder
from navcache.pipeline.runner import ExtractOptions, extract
from navcache.pipeline.sources import make_source
from tests.helpers import make_navila, write_project


@pytest.fixture
def counted(monkeypatch):
    """Frames passed to the (real, tiny) encoder's forward, per run."""
    seen = []
    real = HFVisionEncoder.encode_on_device

    def encode(self, x):
        seen.append(len(x))
        return real(self, x)

    monkeypatch.setattr(HFVisionEncoder, "encode_on_device", encode)
    return seen


def build(tmp_path, name, data, model, **settings):
    folder = tmp_path / name
    folder.mkdir()
    cfg = write_project(folder, data, model, cache_root=str(folder / "cache"), part_size=3, **settings)
    s = extract(load_config(cfg), ExtractOptions("train", only="frame-features"))
    assert not s.errors, s.errors
    return open_cache(folder / "cache/nav/train/frame_features")


def distinct_frames(data) -> tuple[int, int]:
    """(distinct sampled files + one black frame if any sample is padded, rows) from the listing."""
    eps = make_source("navila", data).episodes("train")
    files = {f for e in eps for f in e.files}
    padded = any(k < 0 for e in eps for k in e.record["sample_indices"])
    return len(files) + padded, sum(len(e.record["sample_indices"]) for e in eps)


@pytest.mark.parametrize("memo_mb", [512, 0])
def test_the_encoder_sees_each_distinct_frame_once_and_samples_get_the_same_arrays(tmp_path, tiny_model, counted, memo_mb):
    data = make_navila(tmp_path / "data", n_episodes=4)
    want, rows = distinct_frames(data)
    plain = build(tmp_path, "plain", data, tiny_model, dedup_frames=False)
    assert sum(counted) == rows  # the reference encodes every row
    counted.clear()
    dedup = build(tmp_path, "dedup", data, tiny_model, frame_memo_mb=memo_mb)
    if memo_mb:
        assert sum(counted) == want < rows
    else:  # no memo: frames repeat across batches, never within one
        assert want < sum(counted) < rows
    assert dedup.episodes == plain.episodes
    for eid in plain.episodes:
        a, b = plain[eid], dedup[eid]
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), (eid, k)


def test_a_batch_collated_ahead_gets_its_rows_when_the_batch_before_never_reached_the_memo(tmp_path, tiny_model):
    """``collate`` leaves out the frames the batch in flight encodes; if that batch's rows never
    reach the memo (evicted, or the batch failed and is retried later), ``compute`` encodes them
    itself: the rows equal a batch computed on its own."""
    from navcache.pipeline.plan import plan_split

    data = make_navila(tmp_path / "data", n_episodes=2)
    project = load_config(write_project(tmp_path, data, tiny_model, cache_root=str(tmp_path / "cache")))
    (sp,) = plan_split(project, "nav", "train", only="frame-features")
    stage = sp.stage
    stage.setup()
    eps = [e for p in sp.parts for e in p.episodes]
    items = [stage.prepare(e, {}) for e in eps[:4]]
    first, second = items[:2], items[2:]
    stage.collate(first)  # in flight, never computed here
    keys, x = stage.collate(second)
    shared = {k for it in first for k in it.payload[3]} & {k for it in second for k in it.payload[3]}
    assert shared and not shared & set(keys)  # left to the memo, which will not have them
    got = stage.compute(second, (keys, x))
    stage.memo = type(stage.memo)(stage.memo.max_bytes)  # a fresh memo: the reference encodes everything itself
    want = stage.compute(second)
    for g, w in zip(got, want):
        assert g.keys() == w.keys() and all(np.array_equal(g[a], w[a]) for a in g)
