"""The README's main job on the embedded demo world, end to end, checked against independent computations."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from navcache.cache_specs import open_cache
from navcache.cache_specs.verify import verify_cache
from navcache.pipeline.config import load_config
from navcache.pipeline.motion import bin_steps, egocentric_deltas
from navcache.pipeline.runner import ExtractOptions, extract
from navcache.pipeline.sampling import navila_indices
from tests.helpers import cache_checksums, demo_job, make_navila, write_project


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, demo_world):
    messages = []
    cwd, project = demo_job(tmp_path_factory, demo_world, "job", say=messages.append)
    assert project.origin == "demo"
    summary = extract(project, ExtractOptions("train"))
    return cwd, project, summary


def test_demo_builds_every_cache_clean(demo_run):
    cwd, project, s = demo_run
    assert not s.errors
    assert {(x.dataset, x.stage) for x in s.stages} == {("demo_navila", "poses"), ("demo_navila", "frame-features"), ("demo_motion", "poses"),
        ("demo_rover", "frame-features"), ("demo_rover", "rover-meta"),
        ("demo_tours", "geometry"), ("demo_tours", "keyframes"), ("demo_tours", "frame-features"),
        ("demo_heatmaps", "geometry"), ("demo_heatmaps", "keyframes"), ("demo_heatmaps", "covisibility"),
        ("demo_heatmaps", "frame-features"), ("demo_heatmaps_vggt", "geometry"),
        ("demo_vamos", "frame-features"), ("demo_vamos", "velocity"),
        ("demo_lerobot", "frame-features"), ("demo_lerobot", "robot-meta"), ("demo_lerobot_left", "frame-features")}
    for x in s.stages:
        assert x.finalized and x.episodes_ok > 0 and x.episodes_quarantined == 0
        assert verify_cache(x.cache_dir) == []


def test_demo_lerobot_features_cover_every_robot_meta_frame(demo_run):
    """The flow expert joins frame features to robot_meta rows by (episode, frame_index): every
    frame of every walk has a feature row in both cameras' caches."""
    from navcache.cache_specs import open_cache

    cwd, project, s = demo_run
    root = cwd / "navcache_cache"
    with open_cache(root, "demo_lerobot", "train", "robot_meta") as m:
        want = set(zip(m.load("episode_index").tolist(), m.load("frame_index").tolist()))
        ids = dict(zip(m.episodes, m.load("episode_index")[m.offsets()[0]].tolist()))
    for ds in ("demo_lerobot", "demo_lerobot_left"):
        with open_cache(root, ds, "train", "frame_features") as f:
            start, length = f.offsets()
            rows = {(ids[e], int(k)) for e, a, n in zip(f.episodes, start, length) for k in f.array("frame_index")[a:a + n]}
        assert rows == want


def test_motion_set_is_the_navila_world_at_twenty_times_without_pixels(demo_run):
    """demo_motion: the NaVILA world's own trajectories (its first episodes equal demo_navila's), 20x as many."""
    from navcache.cache_specs import open_cache
    from navcache.pipeline.demo import MOTION_SCALE

    cwd, project, _ = demo_run
    nav = open_cache(project.cache_root, "demo_navila", "train", "poses")
    motion = open_cache(project.cache_root, "demo_motion", "train", "poses")
    assert len(motion) >= MOTION_SCALE * len(nav) * 0.9
    for eid in nav.episodes:
        for k, v in nav[eid].items():
            assert (v == motion[eid][k]).all(), (eid, k)


def test_rover_meta_matches_the_table_and_keeps_train_stats(demo_run):
    import pyarrow.parquet as pq

    from navcache.cache_specs.labels import LABELS

    cwd, project, _ = demo_run
    rows = {r["clip_id"]: r for r in pq.read_table(cwd / "navcache_demo/rover/train.parquet").to_pylist()}
    c = open_cache(project.cache_root, "demo_rover", "train", "rover_meta")
    assert sorted(c.episodes) == sorted(rows)
    for cid in c.episodes[:20]:
        ep, r = c[cid], rows[cid]
        np.testing.assert_allclose(ep["telemetry"], np.asarray(r["telemetry"], np.float32))
        assert [int(ep[h]) for h in LABELS] == [LABELS[h].index(r[h]) for h in LABELS]
        assert float(ep["weight"]) == pytest.approx(r["weight"])
    t = np.asarray([r["telemetry"] for r in rows.values()], np.float64)
    stats = c.stats["telemetry"]
    assert stats["count"] == len(rows)
    np.testing.assert_allclose(stats["mean"], t.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(stats["std"], np.maximum(t.std(0), 1e-6), rtol=1e-5)


def test_poses_are_ground_truth_at_navila_samples(demo_run):
    cwd, project, _ = demo_run
    root = cwd / "navcache_demo/navila"
    gt = json.loads((root / "poses_train.json").read_text())
    ann = {r["video_id"]: r for r in json.loads((root / "annotations_train.json").read_text())}
    c = open_cache(project.cache_root, "demo_navila", "train", "poses")
    assert len(c) == len(ann)
    padded_seen = False
    for vid in c.episodes:
        n = len(ann[vid]["frames"])
        idx, n_pad = navila_indices(n, 8)
        ep = c[vid]
        real = idx >= 0
        np.testing.assert_allclose(ep["poses"][real], np.asarray(gt[vid], np.float32)[idx[real]], rtol=0, atol=1e-6)
        assert ep["padded"].sum() == n_pad and (ep["frame_index"] == idx).all()
        v = ep["step_valid"]
        assert v.sum() == 7 - n_pad and not v[: n_pad].any()
        want = egocentric_deltas(np.asarray(gt[vid], np.float64)[idx[real]])
        np.testing.assert_allclose(ep["deltas"][v], want, atol=1e-5)
        d_bins, y_bins = bin_steps(want)
        assert (ep["dist_bins"][v] == d_bins).all() and (ep["yaw_bins"][v] == y_bins).all()
        for k in ("dist_bins", "yaw_bins"):  # padded steps: cross-entropy's ignore index, in a signed dtype
            assert ep[k].dtype == np.int64 and (ep[k][~v] == -100).all()
        padded_seen |= n_pad > 0
    assert padded_seen, "the demo world must exercise NaVILA's front padding"


def test_frame_features_match_a_direct_forward(demo_run):
    """CLS of a few cached frames equals AutoModel run directly on the decoded JPEG (fp16 storage)."""
    import cv2
    import torch.nn.functional as F
    from transformers import AutoModel

    cwd, project, _ = demo_run
    c = open_cache(project.cache_root, "demo_navila", "train", "frame_features")
    assert c.manifest["provenance"]["encoder"]["random_init"] is True
    model = AutoModel.from_pretrained(project.stage_settings("frame-features").encoder.model).eval()
    ann = {r["video_id"]: r for r in json.loads((cwd / "navcache_demo/navila/annotations_train.json").read_text())}
    vid = c.episodes[3]
    ep = c[vid]
    k = int(np.flatnonzero(ep["frame_index"] >= 0)[0])
    path = cwd / "navcache_demo/navila/train" / ann[vid]["frames"][ep["frame_index"][k]]
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True) / 255.0
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        h = model(pixel_values=x).last_hidden_state[0]
    np.testing.assert_allclose(ep["cls"][k].astype(np.float32), h[0].numpy(), atol=2e-2, rtol=1e-2)
    patches = h[5:].reshape(14, 14, -1)  # 1 CLS + 4 registers dropped
    pooled = patches.reshape(2, 7, 2, 7, -1).mean(dim=(1, 3))
    np.testing.assert_allclose(ep["patch_pooled"][k].astype(np.float32), pooled.numpy(), atol=2e-2, rtol=1e-2)
    pad = ep["padded"]
    if pad.any():  # padding rows are black frames, encoded like any frame, and flagged
        assert (ep["frame_index"][pad] == -1).all()


def test_rover_features_torch_dataset(demo_run):
    _, project, _ = demo_run
    c = open_cache(project.cache_root, "demo_rover", "train", "frame_features")
    ds = c.torch_dataset(["cls"])
    item = ds[0]
    assert item["cls"].shape == (8, c.spec["dims"]["D"]) and item["cls"].dtype == torch.float16
    assert len(ds) == len(c) == 240
    assert "RANDOM-INIT" in repr(c)


def test_hdf5_backend_gives_identical_arrays(tmp_path, tiny_model):
    data = make_navila(tmp_path / "data", n_episodes=3)
    sums = {}
    for backend in ("zarr", "hdf5"):
        d = tmp_path / backend
        d.mkdir()
        cfg = write_project(d, data, tiny_model, backend=backend)
        assert not extract(load_config(cfg), ExtractOptions("train")).errors
        sums[backend] = cache_checksums(d / "cache/nav/train/frame_features")
        assert (d / "cache/nav/train/frame_features/parts/part-00000" / ("data.zarr" if backend == "zarr" else "data.h5")).exists()
    assert sums["zarr"] == sums["hdf5"]
