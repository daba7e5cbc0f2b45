"""The Spatial-MLLM chain on real files: geometry -> space-aware keyframes -> frame features, and
geometry-derived poses, checked against the demo simulator's own ground truth."""
from __future__ import annotations

import copy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from navcache.cache_specs import open_cache
from navcache.cache_specs.verify import verify_cache
from navcache.pipeline import keyframes as kf
from navcache.pipeline.camera import planar_poses, relative_to_first, unproject
from navcache.pipeline.config import config_from_dict
from navcache.pipeline.demo import video_writer
from navcache.pipeline.motion import bin_steps, egocentric_deltas
from navcache.pipeline.project import demo_config_dict
from navcache.pipeline.runner import ExtractOptions, extract
from tests.helpers import demo_job
from tests.pipeline.spatial_mllm_reference import greedy_picks
from tests.standins.vggt_standin import make_standin

CHAIN = ("geometry", "keyframes", "frame-features")


@pytest.fixture(scope="module")
def tours(tmp_path_factory, demo_world):
    cwd, project = demo_job(tmp_path_factory, demo_world, "tours_job")
    summary = extract(project, ExtractOptions("train", datasets=("demo_tours",)))
    return cwd, project, summary


def _project(cwd: Path, edit) -> object:
    """The demo project with ``edit(config_dict)`` applied; same cache root as ``tours``."""
    cfg = copy.deepcopy(demo_config_dict(cwd / "navcache_demo", cwd / "navcache_cache"))
    edit(cfg)
    return config_from_dict(cfg, cwd)


def _built(summary) -> dict[str, int]:
    return {s.stage: s.parts_built for s in summary.stages}


def test_chain_builds_clean(tours):
    _, _, s = tours
    assert not s.errors
    assert [x.stage for x in s.stages] == list(CHAIN)
    for x in s.stages:
        assert x.finalized and x.episodes_ok == 6 and x.episodes_quarantined == 0
        assert verify_cache(x.cache_dir) == []


def test_gt_geometry_agrees_with_the_simulator(tours):
    _, project, _ = tours
    g = open_cache(project.cache_root, "demo_tours", "train", "geometry")
    for i, ep in enumerate(g.episodes):
        tour = video_writer.make_tour(0, "train", i)
        row = g[ep]
        idx = row["frame_index"]
        assert (idx == np.linspace(0, len(tour.poses) - 1, min(128, len(tour.poses))).astype(int)).all()
        # motion between cameras is frame-independent: planar poses from the cache must move like the walker
        want = egocentric_deltas(tour.poses[idx])
        got = egocentric_deltas(planar_poses(row["extrinsic"]))
        np.testing.assert_allclose(got, want, atol=1e-4)
        # world = first camera, y down: every valid point lies between the floor (+0.9 m) and the ceiling (-1.6 m)
        valid = row["world_points_conf"] > 0
        y = row["world_points"][..., 1][valid].astype(np.float64)
        assert y.min() > -1.6 - 0.01 and y.max() < 0.9 + 0.01
        assert np.mean(np.abs(y - 0.9) < 0.01) > 0.05 and np.mean(np.abs(y + 1.6) < 0.01) > 0.05  # floor and ceiling
        # stored depth is the z of each point in its own camera
        r, t = row["extrinsic"][:, :, :3].astype(np.float64), row["extrinsic"][:, :, 3].astype(np.float64)
        z = np.einsum("sij,shwj->shwi", r, row["world_points"].astype(np.float64))[..., 2] + t[:, None, None, 2]
        np.testing.assert_allclose(z[valid], row["depth"][valid].astype(np.float64), rtol=2e-3, atol=2e-2)


# ------------------------------------------------------------------ Spatial-MLLM's selection, written out

def _spatial_mllm_voxel_sets(points: np.ndarray, conf: np.ndarray):
    """``space_aware_frame_sampling`` + ``compute_voxel_sets`` (src/sampling/sa_sampling.py) on float32
    torch tensors, step by step. points [T,H,W,3], conf [T,H,W] float32 -> (sets of voxel tuples, thr, voxel)."""
    wp, wc = torch.from_numpy(points)[None], torch.from_numpy(conf)[None]  # [1,T,H,W,3], [1,T,H,W]
    thr = np.percentile(wc.reshape(-1).numpy(), 50)
    mask = (wc >= thr) & (wc > 0.1)
    kept = wp.reshape(-1, 3)[mask.reshape(-1)]
    x_min, y_min, z_min = kept.min(dim=0)[0]
    x_max, y_max, z_max = kept.max(dim=0)[0]
    # on CUDA, where the reference runs, ``tensor / 20`` multiplies by float32(1/20)
    voxel = min(x_max - x_min, y_max - y_min, z_max - z_min) * torch.tensor(1 / 20, dtype=torch.float32)
    offset, size = torch.tensor([x_min.item(), y_min.item(), z_min.item()]), torch.tensor(voxel.item())
    sets = []
    for t in range(wp.shape[1]):
        valid = wp[0, t].reshape(-1, 3)[mask[0, t].flatten()]
        coords = ((valid - offset) / size).floor().long()
        # torch.unique(coords, dim=0), by one int64 key per row (a 1-D unique is a plain sort: fast)
        lo = coords.min(dim=0).values if len(coords) else torch.zeros(3, dtype=torch.long)
        span = (coords.max(dim=0).values - lo + 1) if len(coords) else torch.ones(3, dtype=torch.long)
        key = torch.unique(((coords - lo) * torch.stack([span[1] * span[2], span[2], torch.tensor(1)])).sum(dim=1))
        rows = torch.stack([key // (span[1] * span[2]), key // span[2] % span[1], key % span[2]], dim=1) + lo
        sets.append(set(map(tuple, rows.tolist())))
    return sets, float(np.float32(thr)), float(np.float32(voxel.item()))


def _scored(sets, picks):
    covered, gains, coverage, every = set(), [], [], set().union(*sets)
    for f in picks:
        gains.append(len(sets[f] - covered))
        covered |= sets[f]
        coverage.append(len(covered) / len(every))
    return gains, coverage, len(every)


def _full_resolution_gt_maps(cwd: Path, episode_id: str):
    """The tour's ground truth unprojected at every pixel, float32 (what Spatial-MLLM would see)."""
    from navcache.pipeline.sources import make_source

    ds = demo_config_dict(cwd / "navcache_demo", cwd / "navcache_cache")["datasets"]["demo_tours"]
    src = make_source(ds["source"], Path(ds["root"]), **ds["options"])
    ep = next(e for e in src.episodes("train") if e.episode_id == episode_id)
    gt = src.load_gt_geometry(ep)
    depth = np.asarray(gt["depth"], np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    intr = np.broadcast_to(np.asarray(gt["intrinsics"], np.float64), (len(depth), 3, 3))
    points = unproject(np.where(valid, depth, 0.0), intr, relative_to_first(gt["extrinsics"]))
    points[~valid] = 0.0
    return points.astype(np.float32), valid.astype(np.float32)


@pytest.fixture(scope="module")
def reference_sets(tours):
    """Per tour: Spatial-MLLM's voxel sets, threshold and voxel size on the float32 full-resolution maps."""
    cwd, project, _ = tours
    out = {}
    for ep in open_cache(project.cache_root, "demo_tours", "train", "geometry").episodes:
        points, conf = _full_resolution_gt_maps(cwd, ep)
        rounded = kf.space_aware(points.astype(np.float16), conf.astype(np.float16), 16).positions.tolist()
        out[ep] = (*_spatial_mllm_voxel_sets(points, conf), rounded)
    return out


def _assert_keyframes_are(keys, sets, picks, thr, voxel):
    gains, coverage, n = _scored(sets, picks)
    order = np.argsort(keys["pick_order"])
    assert keys["position"][order].tolist() == picks and keys["gain"][order].tolist() == gains
    np.testing.assert_array_equal(keys["coverage"][order], np.float32(coverage))
    assert (keys["n_voxels"] == n).all() and (keys["threshold"] == np.float32(thr)).all()
    assert (keys["voxel_size"] == np.float32(voxel)).all()


def test_keyframes_are_spatial_mllms_on_the_full_resolution_float32_maps(tours, reference_sets):
    """The cache is stored at stride 2 in fp16; the picks must still be those of the float32 maps."""
    cwd, project, _ = tours
    g = open_cache(project.cache_root, "demo_tours", "train", "geometry")
    k = open_cache(project.cache_root, "demo_tours", "train", "keyframes")
    assert g[g.episodes[0]]["world_points"].shape[1:] == (64, 64, 3)  # 128x128 ground truth at stride 2
    moved = 0
    for ep in g.episodes:
        sets, thr, voxel, rounded = reference_sets[ep]
        picks = greedy_picks(sets, 16)
        keys = k[ep]
        _assert_keyframes_are(keys, sets, picks, thr, voxel)
        assert (keys["frame_index"] == g[ep]["frame_index"][keys["position"]]).all()
        # the case this guards: the same maps rounded to fp16 (even unstrided) pick other frames
        moved += len(set(picks) - set(rounded))
    assert moved >= len(g.episodes)


def test_space_aware_keyframes_beat_uniform_on_revisiting_tours(tours):
    _, project, _ = tours
    g = open_cache(project.cache_root, "demo_tours", "train", "geometry")
    k = open_cache(project.cache_root, "demo_tours", "train", "keyframes")
    for ep in g.episodes:
        geo, keys = g[ep], k[ep]
        uni = kf.uniform_on(kf.read_voxel_rows(geo), 16)
        assert len(keys["position"]) == len(uni.positions) == 16
        assert keys["coverage"].max() > uni.coverage[-1]  # strictly more of the rooms seen with the same budget
        assert np.all(np.diff(keys["coverage"][np.argsort(keys["pick_order"])]) >= 0)


def test_uniform_keyframes_at_another_stride_are_scored_on_the_same_voxels(tours, reference_sets):
    cwd, _, _ = tours

    def coarse_uniform(cfg):
        cfg["datasets"] = {"demo_tours": {**cfg["datasets"]["demo_tours"], "stages": ["geometry", "keyframes"], "stage_settings": {}}}
        cfg["stages"]["geometry"]["stride"] = 4
        cfg["stages"]["keyframes"] = {"strategy": "uniform", "num_keyframes": 12}
        cfg["cache_root"] = str(cwd / "cache_uniform")

    project = _project(cwd, coarse_uniform)
    s = extract(project, ExtractOptions("train", datasets=("demo_tours",)))
    assert not s.errors
    k = open_cache(project.cache_root, "demo_tours", "train", "keyframes")
    for ep in k.episodes:
        sets, thr, voxel, _ = reference_sets[ep]
        picks = np.linspace(0, len(sets) - 1, 12, dtype=int).tolist()  # Spatial-MLLM's uniform sampling
        _assert_keyframes_are(k[ep], sets, picks, thr, voxel)


def test_frame_features_encode_exactly_the_keyframes(tours):
    _, project, _ = tours
    k = open_cache(project.cache_root, "demo_tours", "train", "keyframes")
    f = open_cache(project.cache_root, "demo_tours", "train", "frame_features")
    assert f.episodes == k.episodes
    for ep in f.episodes:
        assert (f[ep]["frame_index"] == k[ep]["frame_index"]).all()
    assert f.manifest["identity"]["frames_from"] == "keyframes"


def test_changing_keyframe_settings_recomputes_keyframes_and_features_only(tours):
    cwd, project, _ = tours

    def fewer(cfg):
        cfg["stages"]["keyframes"]["num_keyframes"] = 8

    s = extract(_project(cwd, fewer), ExtractOptions("train", datasets=("demo_tours",)))
    assert not s.errors and _built(s) == {"geometry": 0, "keyframes": 2, "frame-features": 2}
    assert len(open_cache(project.cache_root, "demo_tours", "train", "frame_features").array("cls")) == 6 * 8
    s = extract(project, ExtractOptions("train", datasets=("demo_tours",)))  # back: same again
    assert _built(s) == {"geometry": 0, "keyframes": 2, "frame-features": 2}
    s = extract(project, ExtractOptions("train", datasets=("demo_tours",)))
    assert _built(s) == {"geometry": 0, "keyframes": 0, "frame-features": 0}


def test_poses_from_the_geometry_cache_match_the_walker(tours):
    cwd, _, _ = tours

    def eight(cfg):
        ds = cfg["datasets"]["demo_tours"]
        cfg["datasets"] = {"tours8": {**ds, "stages": ["poses"], "options": {"num_frames": 8},
                                      "stage_settings": {"poses": {"provider": "geometry"}}}}
        cfg["cache_root"] = str(cwd / "cache8")

    project = _project(cwd, eight)
    s = extract(project, ExtractOptions("train"))
    assert not s.errors and [x.stage for x in s.stages] == ["geometry", "poses"]
    c = open_cache(project.cache_root, "tours8", "train", "poses")
    assert len(c) == 6
    for i, ep in enumerate(c.episodes):
        poses = video_writer.make_tour(0, "train", i).poses
        idx = np.linspace(0, len(poses) - 1, 8).astype(int)
        row = c[ep]
        want = egocentric_deltas(poses[idx])
        np.testing.assert_allclose(row["deltas"], want, atol=1e-4)
        np.testing.assert_allclose(row["poses"][0], 0.0, atol=1e-6)  # first camera = origin, heading 0
        d, y = bin_steps(want)
        assert (row["dist_bins"] == d).all() and (row["yaw_bins"] == y).all() and row["step_valid"].all()


# ------------------------------------------------------------------ VGGT provider (stand-in model)

def _vggt_project(cwd: Path, model: Path, num_frames: int = 4, cache: str = "cache_vggt"):
    def edit(cfg):
        ds = cfg["datasets"]["demo_tours"]
        cfg["datasets"] = {"tours_vggt": {**ds, "stages": ["geometry", "keyframes"], "options": {"num_frames": num_frames}, "stage_settings": {}}}
        cfg["stages"]["geometry"] = {"provider": "vggt", "image_size": [518, 518], "stride": 14,
                                     "vggt": {"model": str(model), "model_class": "tests.standins.vggt_standin:StandInVGGT", "keep_tokens": True}}
        cfg["cache_root"] = str(cwd / cache)

    return _project(cwd, edit)


def test_vggt_provider_writes_the_geometry_spec(tours, tmp_path):
    cwd, _, _ = tours
    project = _vggt_project(cwd, make_standin(tmp_path / "vggt", seed=0))
    s = extract(project, ExtractOptions("val"))
    assert not s.errors and all(x.episodes_ok == 2 and x.finalized for x in s.stages)
    g = open_cache(project.cache_root, "tours_vggt", "val", "geometry")
    row = g[g.episodes[0]]
    assert row["depth"].shape == (4, 37, 37) and row["world_points"].shape == (4, 37, 37, 3)
    assert row["tokens"].shape == (4, 18, 18, 32) and row["tokens"].dtype == np.float16
    np.testing.assert_allclose(row["intrinsic"][:, :2, 2], 259.0)  # principal point at the 518x518 centre
    assert g.manifest["provenance"]["geometry"]["random_init"] is True


def test_vggt_geometry_is_in_the_first_camera_and_keyframes_on_its_own_float32_points(tours, tmp_path):
    """extrinsic[0] = [I | 0]; each camera sees every stored point where the model put it; the picks
    are Spatial-MLLM's on the model's own full-resolution float32 points (a direct call)."""
    from navcache.pipeline.sources import make_source
    from navcache.pipeline.encoders.vggt import VGGTSettings
    from navcache.pipeline.stages.geometry import GeometrySettings, GeometryStage

    cwd, _, _ = tours
    model = make_standin(tmp_path / "vggt", seed=2)
    project = _vggt_project(cwd, model, num_frames=6, cache="cache_first_camera")
    assert not extract(project, ExtractOptions("val")).errors
    g = open_cache(project.cache_root, "tours_vggt", "val", "geometry")
    k = open_cache(project.cache_root, "tours_vggt", "val", "keyframes")
    assert "re-expressed" in g.manifest["provenance"]["geometry"]["world_frame"]
    ds = project.datasets["tours_vggt"]
    source = make_source(ds.source, Path(ds.root), **ds.options)
    vggt = VGGTSettings(model=str(model), model_class="tests.standins.vggt_standin:StandInVGGT")
    stage = GeometryStage(GeometrySettings(provider="vggt", image_size=(518, 518), stride=14, vggt=vggt), source, ds.options)
    stage.setup()
    for ep in source.episodes("val"):
        row = g[ep.episode_id]
        raw = stage.adapter.infer(stage.prepare(ep, {}).payload[0])  # the model's own predictions
        np.testing.assert_array_equal(row["extrinsic"][0], np.eye(3, 4, dtype=np.float32))
        assert not np.allclose(raw["extrinsic"][0], np.eye(3, 4), atol=1e-3)  # the stand-in's world is elsewhere
        e_raw, e_new = (np.concatenate([e, np.tile([[[0, 0, 0, 1]]], (len(e), 1, 1))], 1).astype(np.float64)
                        for e in (raw["extrinsic"], row["extrinsic"]))
        np.testing.assert_allclose(e_new, e_raw @ np.linalg.inv(e_raw[0]), atol=1e-5)
        p_raw = raw["world_points"][:, ::14, ::14].astype(np.float64)
        p_new = row["world_points"].astype(np.float64)
        cam_raw = np.einsum("sij,shwj->shwi", e_raw[:, :3, :3], p_raw) + e_raw[:, None, None, :3, 3]
        cam_new = np.einsum("sij,shwj->shwi", e_new[:, :3, :3], p_new) + e_new[:, None, None, :3, 3]
        np.testing.assert_allclose(cam_new, cam_raw, rtol=2e-3, atol=2e-3 * np.abs(cam_raw).max())  # fp16 points
        sets, thr, voxel = _spatial_mllm_voxel_sets(raw["world_points"], raw["world_points_conf"])
        _assert_keyframes_are(k[ep.episode_id], sets, greedy_picks(sets, 16), thr, voxel)


def test_vggt_out_of_memory_quarantines_with_the_frame_count(tours, tmp_path):
    cwd, _, _ = tours
    project = _vggt_project(cwd, make_standin(tmp_path / "vggt", oom_above_frames=3), cache="cache_oom")
    s = extract(project, ExtractOptions("val"))
    geo = s.stages[0]
    assert geo.finalized and geo.episodes_quarantined == 2
    assert all("N_m=4" in q["reason"] and "out of GPU memory" in q["reason"] for q in geo.quarantined)
    assert s.stages[1].episodes_quarantined == 2  # downstream says why, too


def test_vggt_non_finite_cameras_are_quarantined(tours, tmp_path):
    cwd, _, _ = tours
    zero_fov = [[0, 0, 0, 0, 0, 0, 1, 0.0, 0.0]]  # fov 0 -> infinite focal length
    project = _vggt_project(cwd, make_standin(tmp_path / "vggt", fixed_pose_enc=zero_fov), cache="cache_nan")
    s = extract(project, ExtractOptions("val"))
    assert s.stages[0].episodes_quarantined == 2
    assert all("NaN or infinite intrinsic" in q["reason"] for q in s.stages[0].quarantined)


# ------------------------------------------------------------------ bad input with the gt provider

def _write_episode(root: Path, name: str, n: int, depth=None, extr=None):
    root.mkdir(parents=True, exist_ok=True)
    w = cv2.VideoWriter(str(root / f"{name}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (32, 32))
    for i in range(n):
        w.write(np.full((32, 32, 3), 10 * i % 255, np.uint8))
    w.release()
    poses = np.stack([np.linspace(0, 1, n), np.zeros(n), np.linspace(0, 0.5, n)], 1)
    e = video_writer.extrinsics(poses) if extr is None else extr
    d = np.full((n, 32, 32), 2.0, np.float32) if depth is None else depth
    k = np.array([[16.0, 0, 15.5], [0, 16.0, 15.5], [0, 0, 1]])
    np.savez(root / f"{name}.gt.npz", depth=d, extrinsics=e, intrinsics=k)


def test_bad_geometry_input_is_quarantined_with_reasons(tmp_path):
    split = tmp_path / "data/train"
    _write_episode(split, "ok", 12)
    _write_episode(split, "one_frame", 1)
    _write_episode(split, "no_depth", 12, depth=np.zeros((12, 32, 32), np.float32))
    _write_episode(split, "nan_depth", 12, depth=np.full((12, 32, 32), np.nan, np.float32))
    bad = video_writer.extrinsics(np.zeros((12, 3)))
    bad[3, 0, 3] = np.nan
    _write_episode(split, "nan_pose", 12, extr=bad)
    cfg = {"cache_root": str(tmp_path / "cache"),
           "datasets": {"d": {"source": "videos", "root": str(tmp_path / "data"), "splits": ["train"],
                              "stages": ["geometry", "keyframes"], "options": {"num_frames": 8}}},
           "stages": {"geometry": {"provider": "gt", "image_size": [32, 32], "stride": 1}, "keyframes": {"num_keyframes": 3}}}
    project = config_from_dict(cfg, tmp_path)
    s = extract(project, ExtractOptions("train"))
    geo = s.stages[0]
    assert geo.finalized and geo.episodes_ok == 1
    why = {q["episode_id"]: q["reason"] for q in geo.quarantined}
    assert set(why) == {"one_frame", "no_depth", "nan_depth", "nan_pose"}
    assert "min_frames" in why["one_frame"]
    assert "no valid pixel" in why["no_depth"] and "no valid pixel" in why["nan_depth"]
    assert "NaN" in why["nan_pose"] or "finite" in why["nan_pose"]
    assert open_cache(project.cache_root, "d", "train", "keyframes").episodes == ["ok"]
    assert s.quarantined == 8  # 4 per stage; what `--strict` turns into exit code 3 (tests/test_cli.py)


def test_inspect_plot_writes_the_contact_sheet_and_top_down_view(tours, tmp_path):
    from tests.helpers import run_cli

    cwd, project, _ = tours
    keys = Path(project.cache_root) / "demo_tours/train/keyframes"
    p = run_cli("inspect", str(keys), "--episode", "tour_0000", "--plot", str(tmp_path / "plots"), cwd=cwd)
    sheet, top = tmp_path / "plots/tour_0000.sheet.png", tmp_path / "plots/tour_0000.topdown.png"
    assert str(sheet) in p.stdout and str(top) in p.stdout
    img = cv2.imread(str(sheet))
    assert img is not None and img.shape[1] > 1000  # 117 thumbnails and the coverage curve
    assert cv2.imread(str(top)) is not None
    bad = run_cli("inspect", str(keys), "--episode", "nope", "--plot", str(tmp_path / "plots"), cwd=cwd, check=False)
    assert bad.returncode == 1 and "nope" in bad.stderr


@pytest.mark.slow
def test_chain_on_dask_and_slurm_shards_matches_the_local_run(tours, tmp_path):
    """Downstream stages read upstream parts on other processes (dask workers, shard jobs)."""
    from tests.helpers import cache_checksums

    cwd, project, _ = tours

    def moved(root):
        return lambda cfg: cfg.update(cache_root=str(root))

    dask_project = _project(cwd, moved(tmp_path / "dask"))
    assert not extract(dask_project, ExtractOptions("train", datasets=("demo_tours",), executor="dask", workers=2)).errors
    sharded = _project(cwd, moved(tmp_path / "shards"))
    for i in range(2):
        extract(sharded, ExtractOptions("train", datasets=("demo_tours",), shard=(i, 2)))
    s = extract(sharded, ExtractOptions("train", datasets=("demo_tours",)))
    assert all(x.parts_built == 0 for x in s.stages)  # the shard jobs built everything
    for name in ("geometry", "keyframes", "frame_features"):
        want = cache_checksums(Path(project.cache_root) / "demo_tours/train" / name)
        assert cache_checksums(tmp_path / "dask/demo_tours/train" / name) == want
        assert cache_checksums(tmp_path / "shards/demo_tours/train" / name) == want
