"""``spatial-llava3d`` stage: LLaVA-3D's 3-D patches as a consumer of the ``spatial`` (MapAnything)
cache, and from the videos source's ground truth.

The geometry is checked by the way back: a patch's world point, taken into its camera with the
pose it was built from, has the depth of the map pixel LLaVA-3D's nearest resize samples, and
projects onto the patch's crop pixel (14 j, 14 i) (the tiny CLIP's 56-px crop, 4x4 grid).
MapAnything is the stand-in (``tests/standins``), CLIP a tiny random-init model.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from navcache.pipeline.encoders.llava3d import patch_xyz
from navcache.pipeline.stages.spatial_llava3d import map_intrinsics
from tests.pipeline.test_spatial import MA, _extract, _project, _reference_patch_xyz, make_tiny_clip
from tests.standins.mapanything_standin import make_standin

CROP, GRID = 56, 4
CROP_PX = np.arange(GRID) * (CROP // GRID)  # crop pixel of each patch row / column


def _nearest(n_in: int) -> np.ndarray:
    """Source pixel PIL's NEAREST resize n_in -> CROP takes for each patch's crop pixel."""
    return np.floor((CROP_PX + 0.5) * n_in / CROP).astype(int)


def _back_in_camera(xyz, valid, depth, k, c2w, stride: int = 1):
    """Assert xyz [P, P, 3] taken into the camera (c2w inverted) has ``depth`` [m, m] (every
    ``stride``-th pixel of an image with intrinsics ``k``) at the pixels nearest-resizing samples,
    and projects with ``k`` onto image pixel stride * (crop pixel * m / crop), where LLaVA-3D's
    resize puts the crop pixel's ray."""
    w2c = np.linalg.inv(np.asarray(c2w, np.float64))
    cam = xyz.astype(np.float64) @ w2c[:3, :3].T + w2c[:3, 3]
    m = depth.shape[0]
    px = _nearest(m)
    np.testing.assert_allclose(cam[..., 2][valid], np.asarray(depth, np.float64)[np.ix_(px, px)][valid], rtol=1e-5)
    uv = cam @ np.asarray(k, np.float64).T
    want = stride * CROP_PX * m / CROP
    np.testing.assert_allclose((uv[..., 0] / uv[..., 2])[valid], np.broadcast_to(want, (GRID, GRID))[valid], atol=1e-3 * stride)
    np.testing.assert_allclose((uv[..., 1] / uv[..., 2])[valid], np.broadcast_to(want[:, None], (GRID, GRID))[valid], atol=1e-3 * stride)


@pytest.mark.parametrize("stride", [1, 4, 8])
def test_a_strided_map_gives_the_points_of_the_full_input(stride):
    """A tilted plane seen at 518x518: from the strided map and its intrinsics (``map_intrinsics``)
    every patch's point has the depth of input pixel stride * (the map pixel nearest-resizing
    samples) and projects, with the FULL input's intrinsics, onto input pixel stride * (crop pixel
    * map size / crop). (Not onto the plane: LLaVA-3D's rule takes the ray of the integer crop
    pixel and the depth of the nearest source pixel, up to half a resized pixel apart.)"""
    n_in = 518
    k = np.array([[400.0, 0, 259.0], [0, 420.0, 250.0], [0, 0, 1]])
    normal, dist = np.array([0.1, -0.2, 1.0]), 3.0
    v, u = np.mgrid[0:n_in, 0:n_in].astype(np.float64)
    full = dist / (normal[0] * (u - k[0, 2]) / k[0, 0] + normal[1] * (v - k[1, 2]) / k[1, 1] + normal[2])
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = q * np.sign(np.linalg.det(q)), [1.0, 2.0, -0.5]
    strided = full[::stride, ::stride]
    xyz, valid = patch_xyz(strided, map_intrinsics(k, np.int64(stride)), c2w, CROP, GRID)
    assert valid.all()
    _back_in_camera(xyz, valid, strided, k, c2w, stride)
    m = strided.shape[0]
    cam = (xyz.astype(np.float64) - c2w[:3, 3]) @ c2w[:3, :3]  # world -> camera
    np.testing.assert_allclose(cam[..., 2], full[np.ix_(stride * _nearest(m), stride * _nearest(m))], rtol=1e-5)


# -- through the pipeline ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    return make_standin(tmp_path_factory.mktemp("ma") / "standin")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture(scope="module")
def lerobot(tmp_path_factory) -> Path:
    from navcache.pipeline.demo.lerobot_writer import write_lerobot_dataset

    root = tmp_path_factory.mktemp("lr") / "v3.0"
    write_lerobot_dataset(root, "v3.0", scale=0.5)
    return root


def _built(summary) -> dict[str, int]:
    assert not summary.errors, summary.errors
    return {s.stage: s.parts_built for s in summary.stages}


def _check_against_spatial(tmp: Path, views: list[int]) -> dict:
    """Every ok episode's patches against the spatial rows of the views they were built from."""
    from navcache.cache_specs import open_cache

    sp, ll = open_cache(tmp / "cache/lr/train/spatial"), open_cache(tmp / "cache/lr/train/spatial_llava3d")
    assert set(ll.index["status"]) == {"ok"}
    rows = {}
    for eid in ll.index["episode_id"]:
        s, r = sp[eid], ll[eid]
        assert (r["frame_index"] == s["frame_index"]).all() and r["patch_xyz"].shape == (2, len(views), GRID, GRID, 3)
        for t in range(2):
            for v, sv in enumerate(views):
                depth = s["depth_z"][t, sv].astype(np.float32)
                px = _nearest(depth.shape[0])
                assert (r["patch_valid"][t, v] == ((depth > 0) & s["mask"][t, sv])[np.ix_(px, px)]).all()
                assert r["patch_valid"][t, v].mean() > 0.5
                _back_in_camera(r["patch_xyz"][t, v], r["patch_valid"][t, v], depth, s["intrinsics"][t, sv],
                                s["camera_poses"][t, sv], int(s["stride"][t]))
        rows[eid] = r
    return rows


@pytest.mark.slow
def test_patches_read_the_mapanything_cache_and_go_stale_with_it(tmp_path, lerobot, standin, tiny_clip):
    from navcache.cache_specs import open_cache
    from navcache.pipeline.demo.lerobot_writer import CAMERAS

    cams = list(CAMERAS)
    spatial = {"stride": 8, "mapanything": {"model": str(standin), **MA}}
    clip = {"model": str(tiny_clip)}
    assert _built(_extract(_project(tmp_path, lerobot, spatial, spatial_llava3d=clip))) == {"spatial": 1, "spatial-llava3d": 1}
    first = _check_against_spatial(tmp_path, [0, 1])
    assert '"random_init": true' in json.dumps(open_cache(tmp_path / "cache/lr/train/spatial_llava3d").manifest)

    # nothing changed: nothing rebuilt; only the CLIP layer changed: MapAnything's cache is kept
    assert _built(_extract(_project(tmp_path, lerobot, spatial, spatial_llava3d=clip))) == {"spatial": 0, "spatial-llava3d": 0}
    built = _built(_extract(_project(tmp_path, lerobot, spatial, spatial_llava3d={**clip, "select_layer": -1})))
    assert built == {"spatial": 0, "spatial-llava3d": 1}
    again = _check_against_spatial(tmp_path, [0, 1])
    eid = next(iter(first))
    assert np.array_equal(again[eid]["patch_xyz"], first[eid]["patch_xyz"])
    assert not np.allclose(again[eid]["patch_features"], first[eid]["patch_features"])

    # the MapAnything cache changes (finer maps): the patches are stale and follow the new maps
    built = _built(_extract(_project(tmp_path, lerobot, {**spatial, "stride": 4}, spatial_llava3d=clip)))
    assert built == {"spatial": 1, "spatial-llava3d": 1}
    finer = _check_against_spatial(tmp_path, [0, 1])
    assert not np.array_equal(finer[eid]["patch_xyz"], first[eid]["patch_xyz"])

    # reconstruct from the second camera only: patches of that camera read view 0 of the rows ...
    one = {**spatial, "views": [cams[1]]}
    assert _built(_extract(_project(tmp_path, lerobot, one, spatial_llava3d={**clip, "views": [cams[1]]}))) == {"spatial": 1, "spatial-llava3d": 1}
    _check_against_spatial(tmp_path, [0])
    # ... and a camera the reconstruction lacks quarantines, naming the fix
    _built(_extract(_project(tmp_path, lerobot, one, spatial_llava3d=clip)))
    ll = open_cache(tmp_path / "cache/lr/train/spatial_llava3d")
    assert set(ll.index["status"]) == {"quarantined"}
    assert f"camera {cams[0]!r} is not among the spatial cache's views ({cams[1]}); add it to stages.spatial.views" in ll.index["reason"][0]


@pytest.mark.slow  # the demo LeRobot dataset and the CLIP folder: ~3 s when it is the first to need them
def test_stage_wiring(lerobot, tiny_clip):
    from navcache.pipeline.errors import ConfigError
    from navcache.pipeline.sources import make_source
    from navcache.pipeline.stages.spatial_llava3d import SpatialLlava3DSettings, SpatialLlava3DStage

    src = make_source("lerobot", lerobot, num_frames=2)
    st = SpatialLlava3DStage(SpatialLlava3DSettings(model=str(tiny_clip)), src, {})
    assert st.consumes == ("spatial",) and st.uses == ("frames",) and st.dims() == {"V": 2, "P": 4, "D": 32}
    with pytest.raises(ConfigError, match="stages.spatial-llava3d.xyz_from 'gt' needs a source with ground-truth geometry"):
        SpatialLlava3DStage(SpatialLlava3DSettings(model=str(tiny_clip), xyz_from="gt"), src, {})
    with pytest.raises(ConfigError, match="stages.spatial-llava3d.views: 'wrist' is not a camera of this dataset"):
        SpatialLlava3DStage(SpatialLlava3DSettings(model=str(tiny_clip), views=("wrist",)), src, {})
    with pytest.raises(ValueError, match="frames_per_batch must be an integer >= 1"):
        SpatialLlava3DSettings(frames_per_batch=0)


@pytest.mark.slow  # shares the module's demo dataset (cheap once built)
def test_spatial_rows_become_depth_images_of_the_picked_cameras(lerobot, tiny_clip):
    """What ``prepare`` takes from spatial rows: this stage's cameras by ``view_index`` (here the
    second only, from rows that list both in reverse order), no depth outside MapAnything's mask,
    the map's intrinsics (input's / stride), the cached pose."""
    from navcache.pipeline.demo.lerobot_writer import CAMERAS
    from navcache.pipeline.errors import Quarantine
    from navcache.pipeline.sources import make_source
    from navcache.pipeline.stages.spatial_llava3d import SpatialLlava3DSettings, SpatialLlava3DStage

    src = make_source("lerobot", lerobot, num_frames=2)
    st = SpatialLlava3DStage(SpatialLlava3DSettings(model=str(tiny_clip), views=(list(CAMERAS)[1],)), src, {})
    rng = np.random.default_rng(3)
    depth = rng.uniform(1, 3, (2, 2, 5, 5)).astype(np.float16)
    mask = rng.random((2, 2, 5, 5)) > 0.3
    k = np.broadcast_to(np.array([[40.0, 0, 20], [0, 44.0, 18], [0, 0, 1]], np.float32), (2, 2, 3, 3))
    poses = np.broadcast_to(np.eye(4, dtype=np.float32), (2, 2, 4, 4)).copy()
    poses[:, :, 0, 3] = [[1, 2], [3, 4]]
    rows = {"frame_index": np.array([0, 5]), "view_index": np.array([[1, 0], [1, 0]]), "stride": np.array([4, 4]),
            "depth_z": depth, "mask": mask, "intrinsics": k, "camera_poses": poses}
    geo = st._from_spatial(rows, np.array([0, 5]))
    assert geo["depth"].shape == (2, 1, 5, 5)
    np.testing.assert_array_equal(geo["depth"][:, 0], np.where(mask[:, 0], depth[:, 0], 0))
    np.testing.assert_allclose(geo["intrinsics"][:, 0], np.broadcast_to([[10.0, 0, 5], [0, 11.0, 4.5], [0, 0, 1]], (2, 3, 3)))
    assert (geo["cam2world"][:, 0, 0, 3] == [1, 3]).all()
    with pytest.raises(Quarantine, match=r"the spatial cache holds frames \[0, 5\] but this stage samples \[0, 6\]"):
        st._from_spatial(rows, np.array([0, 6]))


@pytest.mark.slow
def test_ground_truth_xyz_from_the_videos_sidecar(tmp_path, tiny_clip):
    """xyz_from gt on a demo tour (videos source, one view): the points are LLaVA-3D's full-map
    route on the .gt.npz depth + pose, and back in the camera they have the ground-truth depth."""
    from navcache.cache_specs import open_cache
    from navcache.pipeline.demo.video_writer import write_tour
    from navcache.pipeline.sources import make_source

    write_tour(tmp_path / "data", seed=0, split="train", index=0)
    data = tmp_path / "data" / "videos"
    summary = _extract(_project(tmp_path, data, None, source="videos", spatial_llava3d={"model": str(tiny_clip), "xyz_from": "gt"}))
    assert _built(summary) == {"spatial-llava3d": 1}  # no MapAnything cache needed
    assert not (tmp_path / "cache/lr/train/spatial").exists()
    c = open_cache(tmp_path / "cache/lr/train/spatial_llava3d")
    (eid,) = c.index["episode_id"]
    row = c[eid]
    assert row["patch_features"].shape == (2, 1, GRID, GRID, 32) and row["patch_valid"].all()  # a closed plan: depth everywhere
    src = make_source("videos", data, num_frames=2)
    gt = src.load_gt_geometry(next(e for e in src.episodes("train") if e.episode_id == eid))
    assert (gt["indices"] == row["frame_index"]).all()
    for t in range(2):
        c2w = np.linalg.inv(np.vstack([gt["extrinsics"][t], [0, 0, 0, 1]]))
        want = _reference_patch_xyz(gt["depth"][t], gt["intrinsics"][t], c2w, CROP, GRID)
        np.testing.assert_allclose(row["patch_xyz"][t, 0], want, rtol=1e-5, atol=1e-5)
        _back_in_camera(row["patch_xyz"][t, 0], row["patch_valid"][t, 0], gt["depth"][t], gt["intrinsics"][t], c2w)
