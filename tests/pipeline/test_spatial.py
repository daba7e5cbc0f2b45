"""``spatial`` stage: MapAnything adapter against its stand-in, LLaVA-3D's patch-to-3D rule against
an independent full-map route, the CLIP tower against transformers' own processor + model, and the
stage end to end on the demo LeRobot dataset (two cameras = two views). The ``spatial-llava3d``
stage, which consumes this cache: ``test_spatial_llava3d.py``.

No mapanything, no download: the adapter is pointed at ``tests.standins.mapanything_standin``; the
CLIP tower is a tiny seeded random-init ``CLIPVisionModel`` saved with ``save_pretrained``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from navcache.pipeline.encoders.llava3d import ClipPatchEncoder, Llava3DSettings, llava3d_depth_view, patch_xyz
from navcache.pipeline.encoders.mapanything import MapAnythingAdapter, MapAnythingSettings
from navcache.pipeline.encoders.weights import PROVENANCE_FILE
from navcache.pipeline.errors import NavcacheError
from tests.standins.mapanything_standin import make_standin

STANDIN = "tests.standins.mapanything_standin"
MA = {"model_class": f"{STANDIN}:StandInMapAnything", "preprocess": f"{STANDIN}:preprocess_inputs"}


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    return make_standin(tmp_path_factory.mktemp("ma") / "standin")


def make_tiny_clip(out: Path, image: int = 56, seed: int = 0) -> Path:
    """Seeded random-init CLIPVisionModel (patch 14, 4x4 grid) + a CLIPImageProcessor config."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=image, patch_size=14)
    CLIPVisionModel(cfg).eval().save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": image}, crop_size={"height": image, "width": image}).save_pretrained(out)
    (out / PROVENANCE_FILE).write_text(json.dumps({"random_init": True, "seed": seed, "note": "tiny random CLIP for tests"}))
    return out


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


# -- settings -------------------------------------------------------------------------------------


def test_settings_refuse_other_code_and_name_the_field():
    with pytest.raises(ValueError, match="model_class 'json:JSONDecoder' is not allowed"):
        MapAnythingSettings(model_class="json:JSONDecoder")
    MapAnythingSettings(model_class="json:JSONDecoder", allow_custom_code=True)
    with pytest.raises(ValueError, match="resolution_set must be one of 518, 512, 504"):
        MapAnythingSettings(resolution_set=500)
    with pytest.raises(ValueError, match="xyz_from must be one of mapanything, gt"):
        Llava3DSettings(xyz_from="lidar")


def test_llava3d_provider_points_at_its_own_stage(tmp_path):
    from navcache.pipeline.config import config_from_dict
    from navcache.pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="stages.spatial: provider 'llava3d' is its own stage now: add stage 'spatial-llava3d'"):
        config_from_dict({"cache_root": "c", "datasets": {}, "stages": {"spatial": {"provider": "llava3d"}}}, tmp_path)


def test_missing_package_says_how_to_install(tmp_path):
    a = MapAnythingAdapter(MapAnythingSettings(model=str(tmp_path)))
    if __import__("importlib").util.find_spec("mapanything") is not None:
        pytest.skip("mapanything is installed here")
    with pytest.raises(NavcacheError, match="pip install git\\+https://github.com/facebookresearch/map-anything"):
        a.load()


# -- the adapter against the stand-in -----------------------------------------------------------------


@pytest.mark.slow
def test_adapter_outputs_views_in_order_and_batched_like_single_timesteps(standin):
    a = MapAnythingAdapter(MapAnythingSettings(model=str(standin), keep_features=True, feature_grid=1, **MA))
    assert a.random_init and a.provenance()["random_init"] is True
    rng = np.random.default_rng(0)
    views = [rng.integers(0, 255, (2, 48, 64, 3), dtype=np.uint8) for _ in range(2)]  # 4:3 -> 518x392 bucket
    out = a.infer(views)
    assert out["pts3d"].shape == (2, 2, 392, 518, 3) and out["mask"].dtype == bool and out["features"].shape == (2, 2, 1, 1, 16)
    call = a._model.calls[-1]
    assert (call["views"], call["batch"], call["use_amp"], call["amp_dtype"]) == (2, 2, False, "fp32")  # CPU: no autocast
    # view 0 is the reference camera; the outputs are those of the model's own geometry
    np.testing.assert_allclose(out["camera_poses"][:, 0], np.broadcast_to(np.eye(4), (2, 4, 4)), atol=1e-6)
    k, c2w, z = out["intrinsics"][1, 1], out["camera_poses"][1, 1], out["depth_z"][1, 1]
    v, u = 200, 300
    cam = np.array([(u - k[0, 2]) * z[v, u] / k[0, 0], (v - k[1, 2]) * z[v, u] / k[1, 1], z[v, u], 1.0])
    if out["mask"][1, 1, v, u]:
        np.testing.assert_allclose((c2w @ cam)[:3], out["pts3d"][1, 1, v, u], rtol=1e-4, atol=1e-4)
    # each timestep is its own scene: batching two equals running them one by one
    one = a.infer([x[1:] for x in views])
    for name in ("pts3d", "depth_z", "camera_poses", "intrinsics", "conf"):
        np.testing.assert_allclose(out[name][1:], one[name], rtol=1e-4, atol=1e-5, err_msg=name)
    # pooled features = the transformer's final per-view features averaged (independent route)
    model = a._model
    imgs = a.preprocess([x[:1] for x in views])
    final, _ = model.info_sharing([model.encoder(i["img"]) for i in imgs])
    for vi in range(2):
        np.testing.assert_allclose(out["features"][0, vi, 0, 0], final.features[vi][0].mean(dim=(1, 2)).detach().numpy(), rtol=1e-4, atol=1e-5)


# -- LLaVA-3D's patch-to-3D rule ----------------------------------------------------------------------


def _reference_patch_xyz(depth, k, c2w, crop, grid):
    """LLaVA-3D's pipeline shape: depth -> LLaVA-3D depth view, unproject EVERY crop pixel
    (torch, float64), then F.interpolate(mode="nearest") to the grid."""
    d, kk = llava3d_depth_view(depth, k, crop)
    z = torch.from_numpy(d.astype(np.float64))
    y, x = torch.meshgrid(torch.arange(crop, dtype=torch.float64), torch.arange(crop, dtype=torch.float64), indexing="ij")
    cam = torch.stack([(x - kk[0, 2]) * z / kk[0, 0], (y - kk[1, 2]) * z / kk[1, 1], z, torch.ones_like(z)], -1)
    world = (torch.from_numpy(np.asarray(c2w, np.float64)) @ cam.reshape(-1, 4).T).T.reshape(crop, crop, 4)[..., :3]
    return torch.nn.functional.interpolate(world.permute(2, 0, 1)[None], size=(grid, grid), mode="nearest")[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("hw", [(60, 80), (80, 60), (64, 64)], ids=["landscape", "portrait", "square"])
def test_patch_xyz_equals_full_map_unprojection_then_nearest(hw):
    rng = np.random.default_rng(1)
    h, w = hw
    depth = rng.uniform(0.5, 4.0, (h, w))
    k = np.array([[50.0, 0, w / 2], [0, 55.0, h / 2], [0, 0, 1]])
    c2w = np.eye(4)
    q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    c2w[:3, :3] = q if np.linalg.det(q) > 0 else -q
    c2w[:3, 3] = [0.3, -1.0, 2.0]
    xyz, valid = patch_xyz(depth, k, c2w, crop=56, grid=4)
    assert valid.all()
    np.testing.assert_allclose(xyz, _reference_patch_xyz(depth, k, c2w, 56, 4), rtol=1e-5, atol=1e-5)


def test_patch_xyz_lands_on_the_surface_it_sees():
    """A fronto-parallel wall at z = 3 seen by a camera at the origin: every patch's world point
    lies on the wall, straight along the ray through its sampled crop pixel."""
    h, w = 60, 80
    k = np.array([[40.0, 0, 40.0], [0, 40.0, 30.0], [0, 0, 1]])
    xyz, valid = patch_xyz(np.full((h, w), 3.0), k, np.eye(4), crop=56, grid=4)
    assert valid.all() and np.allclose(xyz[..., 2], 3.0)
    # crop pixel (14 i, 14 j) of the 74x56 resize, left offset 9 -> original pixel ((14 j + 9) * 80 / 74, 14 i * 60 / 56)
    s = 56 / 60
    np.testing.assert_allclose(xyz[0, 1, 0], (14 - (40 * 74 / 80 - 9)) * 3.0 / (40 * 74 / 80), rtol=1e-6)
    np.testing.assert_allclose(xyz[2, 0, 1], (28 - 30 * s) * 3.0 / (40 * s), rtol=1e-6)


def test_patch_xyz_marks_missing_depth_invalid():
    depth = np.full((56, 56), 2.0)
    depth[:14, :14] = 0.0
    depth[-14:, -14:] = np.nan
    xyz, valid = patch_xyz(depth, np.array([[30.0, 0, 28], [0, 30.0, 28], [0, 0, 1]]), np.eye(4), crop=56, grid=4)
    assert not valid[0, 0] and not valid[3, 3] and valid.sum() == 14 and (xyz[~valid] == 0).all()


# -- the CLIP tower -------------------------------------------------------------------------------------


@pytest.mark.slow  # transformers import + a model save: ~5 s here
def test_clip_patches_are_layer_minus_two_without_cls(tiny_clip):
    from transformers import CLIPImageProcessor, CLIPVisionModel

    enc = ClipPatchEncoder(Llava3DSettings(model=str(tiny_clip)))
    assert (enc.crop_size(), enc.grid(), enc.hidden_size()) == (56, 4, 32) and enc.random_init
    frames = np.random.default_rng(2).integers(0, 255, (2, 40, 70, 3), dtype=np.uint8)
    got = enc.encode(frames)
    proc = CLIPImageProcessor.from_pretrained(tiny_clip)
    model = CLIPVisionModel.from_pretrained(tiny_clip).eval()
    with torch.no_grad():
        hs = model(**proc(list(frames), return_tensors="pt"), output_hidden_states=True).hidden_states
    want = hs[-2][:, 1:].reshape(2, 4, 4, 32).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert not np.allclose(got, hs[-1][:, 1:].reshape(2, 4, 4, 32).numpy(), atol=1e-3)


# -- the stage on the demo LeRobot dataset ---------------------------------------------------------------


@pytest.fixture(scope="module")
def lerobot(tmp_path_factory) -> Path:
    from navcache.pipeline.demo.lerobot_writer import write_lerobot_dataset

    root = tmp_path_factory.mktemp("lr") / "v3.0"
    write_lerobot_dataset(root, "v3.0", scale=0.5)
    return root


def _project(tmp: Path, data: Path, spatial: dict | None, source: str = "lerobot", **more: dict):
    """A project with stage ``spatial`` (when ``spatial`` is given) and the stages of ``more``
    (name -> settings) on dataset ``lr`` at ``data``, 2 frames per episode."""
    from navcache.pipeline.config import config_from_dict

    stages = ({"spatial": spatial} if spatial is not None else {}) | {k.replace("_", "-"): v for k, v in more.items()}
    return config_from_dict({"cache_root": str(tmp / "cache"), "datasets": {"lr": {
        "source": source, "root": str(data), "splits": ["train"], "stages": list(stages),
        "options": {"num_frames": 2}, "part_size": 8}}, "stages": stages}, tmp)


def _extract(project):
    from navcache.pipeline.runner import ExtractOptions, extract

    return extract(project, ExtractOptions("train"))


@pytest.mark.slow
def test_mapanything_stage_two_cameras(tmp_path, lerobot, standin):
    from navcache.cache_specs import open_cache
    from navcache.pipeline.demo.lerobot_writer import CAMERAS

    summary = _extract(_project(tmp_path, lerobot, {"provider": "mapanything", "stride": 8, "mapanything": {"model": str(standin), **MA}}))
    assert not summary.errors, summary.errors
    c = open_cache(tmp_path / "cache/lr/train/spatial")
    assert set(c.index["status"]) == {"ok"}
    row = c[c.index["episode_id"][0]]
    assert row["pts3d"].shape == (2, 2, 65, 65, 3) and row["camera_poses"].shape == (2, 2, 4, 4)
    assert row["frame_index"][0] == 0 and row["mask"].dtype == bool
    assert (row["view_index"] == [0, 1]).all() and (row["stride"] == 8).all()  # cameras in the source's order
    np.testing.assert_allclose(row["camera_poses"][:, 0], np.broadcast_to(np.eye(4), (2, 4, 4)), atol=1e-6)
    prov = json.dumps(c.manifest)
    assert '"random_init": true' in prov and all(k in prov for k in CAMERAS)

    # the view set is part of the fingerprint: one camera only -> every part rebuilt, V = 1
    one = next(iter(CAMERAS))
    summary = _extract(_project(tmp_path, lerobot, {"provider": "mapanything", "stride": 8, "views": [one],
                                                    "mapanything": {"model": str(standin), **MA}}))
    assert not summary.errors
    c1 = open_cache(tmp_path / "cache/lr/train/spatial")
    row1 = c1[c1.index["episode_id"][0]]
    assert row1["depth_z"].shape == (2, 1, 65, 65) and (row1["view_index"] == 0).all()
    assert not np.array_equal(row1["depth_z"][:, 0], row["depth_z"][:, 0])  # alone, the view is reconstructed differently


@pytest.mark.slow
def test_nan_outputs_quarantine_naming_frame_and_view(tmp_path, lerobot):
    from navcache.cache_specs import open_cache

    bad = make_standin(tmp_path / "nan", nan_below_brightness=2.0)  # every view NaN
    summary = _extract(_project(tmp_path, lerobot, {"provider": "mapanything", "stride": 8, "mapanything": {"model": str(bad), **MA}}))
    assert not summary.errors
    c = open_cache(tmp_path / "cache/lr/train/spatial")
    assert set(c.index["status"]) == {"quarantined"}
    reason = c.index["reason"][0]
    assert "frame 0" in reason and "observation.images.image" in reason and "NaN" in reason
