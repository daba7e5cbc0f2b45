"""VGGT adapter: pose conversion, crop preprocessing, and the adapter against a stand-in model.

No vggt, no download: the adapter is pointed at ``tests.standins.vggt_standin:StandInVGGT``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from navcache.pipeline.encoders import vggt as V
from navcache.pipeline.encoders.vggt import (
    VGGTAdapter,
    VGGTSettings,
    pose_encoding_to_extri_intri,
    preprocess_crop,
    processed_size,
    quat_xyzw_to_rotmat,
)
from navcache.pipeline.errors import NavcacheError
from tests.standins.vggt_standin import StandInVGGT, make_standin

STANDIN = "tests.standins.vggt_standin:StandInVGGT"
S45 = math.sqrt(0.5)


def rodrigues(axis, angle) -> np.ndarray:
    """R = I + sin(a) K + (1 - cos(a)) K^2 for a unit axis: an independent route to the matrix."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx


def axis_angle_to_xyzw(axis, angle) -> np.ndarray:
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    return np.array([*(k * math.sin(angle / 2)), math.cos(angle / 2)])


# -- rotations ---------------------------------------------------------------------------------


def test_identity_quaternion_is_identity_matrix():
    np.testing.assert_allclose(quat_xyzw_to_rotmat([0, 0, 0, 1]), np.eye(3), atol=1e-12)


@pytest.mark.parametrize(
    "q, expected",
    [
        # +90 degrees about x: y -> z, z -> -y
        ([S45, 0, 0, S45], [[1, 0, 0], [0, 0, -1], [0, 1, 0]]),
        # +90 degrees about y: z -> x, x -> -z
        ([0, S45, 0, S45], [[0, 0, 1], [0, 1, 0], [-1, 0, 0]]),
        # +90 degrees about z: x -> y, y -> -x
        ([0, 0, S45, S45], [[0, -1, 0], [1, 0, 0], [0, 0, 1]]),
    ],
    ids=["x", "y", "z"],
)
def test_quarter_turns_in_xyzw_order(q, expected):
    np.testing.assert_allclose(quat_xyzw_to_rotmat(q), expected, atol=1e-12)


def test_scalar_first_reading_would_differ():
    # (0, 0, 0, 1) read as WXYZ is a 180-degree turn about z; XYZW must give the identity
    assert not np.allclose(quat_xyzw_to_rotmat([1, 0, 0, 0]), np.eye(3))


@settings(max_examples=200, deadline=None)
@given(
    axis=st.tuples(*[st.floats(-1, 1, allow_nan=False)] * 3).filter(lambda a: np.linalg.norm(a) > 1e-3),
    angle=st.floats(-math.pi, math.pi, allow_nan=False),
    scale=st.floats(0.01, 100),
    sign=st.sampled_from([1.0, -1.0]),
)
def test_rotation_matches_rodrigues(axis, angle, scale, sign):
    q = axis_angle_to_xyzw(axis, angle) * scale * sign  # q and c*q are the same rotation
    r = quat_xyzw_to_rotmat(q)
    np.testing.assert_allclose(r, rodrigues(axis, angle), atol=1e-9)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-9)


def test_rotation_batches_keep_leading_shape():
    q = np.tile([0, 0, S45, S45], (2, 5, 1))
    assert quat_xyzw_to_rotmat(q).shape == (2, 5, 3, 3)
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        quat_xyzw_to_rotmat(np.zeros((3, 3)))


# -- pose encodings ------------------------------------------------------------------------------


def enc(t=(0, 0, 0), q=(0, 0, 0, 1), fov_h=math.pi / 2, fov_w=math.pi / 2):
    return np.array([*t, *q, fov_h, fov_w], float)


def test_fov_90_gives_focal_half_width_and_centre_principal_point():
    ext, k = pose_encoding_to_extri_intri(enc(), (518, 518))
    np.testing.assert_allclose(k, [[259, 0, 259], [0, 259, 259], [0, 0, 1]], atol=1e-9)
    np.testing.assert_allclose(ext, np.hstack([np.eye(3), np.zeros((3, 1))]), atol=1e-12)


def test_non_square_image_pairs_fov_h_with_fy_and_fov_w_with_fx():
    h, w = 294, 518
    _, k = pose_encoding_to_extri_intri(enc(fov_h=math.radians(60), fov_w=math.radians(90)), (h, w))
    assert k[0, 0] == pytest.approx(w / 2)  # fx from fov_w = 90 degrees
    assert k[1, 1] == pytest.approx((h / 2) / math.tan(math.radians(30)))  # fy from fov_h
    assert (k[0, 2], k[1, 2]) == (w / 2, h / 2)  # (cx, cy) = (W/2, H/2), not (H/2, W/2)
    assert k[0, 1] == k[1, 0] == k[2, 0] == k[2, 1] == 0 and k[2, 2] == 1


def test_extrinsic_is_rotation_then_translation_column():
    t = (1.5, -2.0, 3.25)
    ext, _ = pose_encoding_to_extri_intri(enc(t=t, q=(0, 0, S45, S45)), (28, 42))
    np.testing.assert_allclose(ext[:, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(ext[:, 3], t)


@settings(max_examples=100, deadline=None)
@given(
    axis=st.tuples(*[st.floats(-1, 1, allow_nan=False)] * 3).filter(lambda a: np.linalg.norm(a) > 1e-3),
    angle=st.floats(-math.pi, math.pi, allow_nan=False),
    fov_h=st.floats(0.1, 3.0),
    fov_w=st.floats(0.1, 3.0),
    h=st.integers(1, 60).map(lambda n: 14 * n),
    w=st.integers(1, 60).map(lambda n: 14 * n),
)
def test_pose_round_trip_against_independent_camera_model(axis, angle, fov_h, fov_w, h, w):
    t = np.array([0.3, -1.0, 2.0])
    ext, k = pose_encoding_to_extri_intri(enc(t=t, q=axis_angle_to_xyzw(axis, angle), fov_h=fov_h, fov_w=fov_w), (h, w))
    np.testing.assert_allclose(ext[:, :3], rodrigues(axis, angle), atol=1e-9)
    # a point on the camera's viewing ray through the right image edge must project to x = W
    edge_cam = np.array([math.tan(fov_w / 2), 0.0, 1.0])
    world = rodrigues(axis, angle).T @ (edge_cam - t)  # invert camera-from-world
    uvw = k @ (ext[:, :3] @ world + ext[:, 3])
    assert uvw[0] / uvw[2] == pytest.approx(w, rel=1e-9)
    assert uvw[1] / uvw[2] == pytest.approx(h / 2, rel=1e-9)


def test_pose_encoding_batches_and_rejects_bad_input():
    p = np.stack([enc(), enc(t=(1, 2, 3))])[None]  # [1, 2, 9]
    ext, k = pose_encoding_to_extri_intri(p, (14, 28))
    assert ext.shape == (1, 2, 3, 4) and k.shape == (1, 2, 3, 3)
    with pytest.raises(ValueError, match=r"\[\.\.\., 9\]"):
        pose_encoding_to_extri_intri(np.zeros((2, 8)), (14, 14))
    with pytest.raises(ValueError, match="image_hw"):
        pose_encoding_to_extri_intri(enc(), (0, 14))


# -- crop preprocessing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hw, expected",
    [
        ((480, 640), (392, 518)),  # landscape: 480 * 518 / 640 / 14 = 27.75 -> 28 * 14
        ((720, 1280), (294, 518)),  # 16:9 -> 20.8 -> 21 * 14
        ((640, 480), (518, 518)),  # portrait: 686 rows, centre-cropped to 518
        ((512, 512), (518, 518)),  # square
        ((5, 74), (28, 518)),  # 2.5 rounds half to even (2), as Python's round in VGGT's loader
        ((7, 74), (56, 518)),  # 3.5 -> 4
    ],
)
def test_processed_size(hw, expected):
    assert processed_size(*hw) == expected


def test_processed_size_rejects_what_the_loader_cannot_handle():
    with pytest.raises(ValueError, match="too wide"):
        processed_size(1, 74)  # height rounds to 0 rows
    with pytest.raises(ValueError, match="h must"):
        processed_size(0, 10)
    with pytest.raises(ValueError, match="multiple"):
        processed_size(10, 10, target=500)


@pytest.mark.parametrize("hw", [(48, 64), (64, 48), (37, 37), (90, 160)])
def test_preprocess_shape_dtype_range(hw):
    frames = np.random.default_rng(0).integers(0, 256, (2, *hw, 3), dtype=np.uint8)
    x = preprocess_crop(frames)
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
    assert tuple(x.shape) == (2, 3, *processed_size(*hw))
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float(x.max()) > 0.9 and float(x.min()) < 0.1  # scaled by 1/255, not clipped to a band


def test_preprocess_keeps_channel_order_and_constant_colour():
    frames = np.zeros((1, 30, 40, 3), np.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 200, 10, 90
    x = preprocess_crop(frames)
    for c, v in enumerate((200, 10, 90)):
        np.testing.assert_allclose(x[0, c].numpy(), v / 255, atol=1e-7)


def test_preprocess_crops_the_centre_rows_of_a_portrait_frame():
    # rows hold their own index: a linear ramp, which bicubic resampling reproduces
    h, w = 200, 100
    frames = np.repeat(np.arange(h, dtype=np.uint8)[None, :, None, None], 3, axis=3).repeat(w, axis=2)
    x = preprocess_crop(frames)[0, 0].numpy() * 255  # [518, 518]
    resized = 74 * 14  # round(200 * 5.18 / 14) * 14 = 1036 rows before the crop
    top = (resized - 518) // 2
    src_row = lambda r: (r + 0.5) * h / resized - 0.5  # pixel-centre mapping
    assert x.shape == (518, 518)
    assert x[0].mean() == pytest.approx(src_row(top), abs=0.6)
    assert x[-1].mean() == pytest.approx(src_row(top + 517), abs=0.6)


def test_preprocess_resamples_bicubically():
    # A cubic kernel rings at a step (values beyond both plateaus); nearest and bilinear cannot.
    frames = np.full((1, 20, 37, 3), 50, np.uint8)
    frames[:, :, 18:] = 200
    x = preprocess_crop(frames)[0, 0].numpy() * 255  # 14x upsampling across the step
    row = x[x.shape[0] // 2]
    assert row.min() < 49.5 and row.max() > 200.5
    assert ((row > 60) & (row < 190)).sum() >= 4  # a smooth transition, not a jump


def test_preprocess_rejects_non_uint8_or_wrong_layout():
    with pytest.raises(ValueError, match="uint8"):
        preprocess_crop(np.zeros((1, 20, 20, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        preprocess_crop(np.zeros((1, 3, 20, 20), np.uint8))


# -- settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"model": ""}, "model"),
        ({"model_class": "vggt.models.vggt.VGGT"}, "model_class"),
        ({"dtype": "float16"}, "dtype"),
        ({"device": "gpu"}, "device"),
        ({"keep_tokens": "yes"}, "keep_tokens"),
        ({"token_pool": 0}, "token_pool"),
        ({"token_pool": True}, "token_pool"),
        ({"spatial_mllm": 1}, "spatial_mllm"),
        ({"spatial_mllm": True, "dtype": "fp32"}, "spatial_mllm"),
    ],
)
def test_settings_validation_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        VGGTSettings(**kw)


def test_settings_defaults():
    s = VGGTSettings()
    assert (s.model, s.model_class, s.dtype, s.device, s.keep_tokens, s.token_pool, s.spatial_mllm) == (
        "facebook/VGGT-1B", "vggt.models.vggt:VGGT", "auto", "auto", False, 2, False
    )


# -- Spatial-MLLM's input (src/sampling/sa_sampling.py: load_and_preprocess_images, .to(bfloat16)) ----


def _spatial_mllm_loader(frame: np.ndarray) -> torch.Tensor:
    """Spatial-MLLM's loader for one decoded RGB frame, step by step with PIL."""
    from PIL import Image

    img = Image.fromarray(frame)
    width, height = img.size
    if height > width:
        img = img.rotate(-90, expand=True)
    width, height = img.size
    new_height = round(height * (518 / width) / 14) * 14
    img = img.resize((518, new_height), Image.Resampling.BICUBIC)
    t = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
    if new_height > 518:
        start = (new_height - 518) // 2
        t = t[:, start : start + 518]
    return t


@pytest.mark.parametrize("hw", [(100, 60), (97, 31), (64, 64), (60, 100), (300, 301)])
def test_spatial_mllm_rotates_portrait_frames_like_its_loader(hw):
    frames = np.random.default_rng(sum(hw)).integers(0, 256, (2, *hw, 3), dtype=np.uint8)
    got = preprocess_crop(frames, rotate_portrait=True)
    want = torch.stack([_spatial_mllm_loader(f) for f in frames])
    assert got.shape == want.shape
    assert torch.equal(got, want)
    if hw[0] > hw[1]:  # plain navcache crops the centre rows instead
        assert preprocess_crop(frames).shape != got.shape or not torch.equal(preprocess_crop(frames), got)
    else:
        assert torch.equal(preprocess_crop(frames), got)


def test_spatial_mllm_feeds_vggt_bfloat16_images(standin_dir):
    x = images(s=2)
    ad = adapter(standin_dir, dtype="bf16", spatial_mllm=True)
    seen = []
    hook = ad.load().aggregator.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype))
    try:
        out = ad.infer(x)
        plain = adapter(standin_dir, dtype="bf16")
        plain._model = ad.load()  # the same module, so the hook sees both calls
        ref = plain.infer(x.to(torch.bfloat16).float())  # the bf16 rounding is the only difference
        unrounded = plain.infer(x)
    finally:
        hook.remove()
    assert seen == [torch.bfloat16, torch.float32, torch.float32]
    for name in ref:
        np.testing.assert_array_equal(out[name], ref[name])
    assert not np.array_equal(out["depth"], unrounded["depth"])
    assert "spatial_mllm" in ad.identity() and "spatial_mllm" not in plain.identity()


# -- adapter against the stand-in ------------------------------------------------------------------

POSES = [
    [0.1, 0.2, 0.3, 0, 0, 0, 1, math.pi / 2, math.pi / 2],
    [1.0, -1.0, 0.5, 0, 0, S45, S45, math.radians(60), math.radians(90)],
    [0.0, 0.0, 2.0, S45, 0, 0, S45, math.radians(45), math.radians(70)],
]


@pytest.fixture(scope="module")
def standin_dir(tmp_path_factory):
    return make_standin(tmp_path_factory.mktemp("vggt") / "standin", seed=0, embed_dim=16)


def adapter(model_dir, **kw) -> VGGTAdapter:
    return VGGTAdapter(VGGTSettings(model=str(model_dir), model_class=STANDIN, device="cpu", **kw))


def images(s=3, h=56, w=84, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random((s, 3, h, w), dtype=np.float32))


def test_end_to_end_from_decoded_frames(standin_dir):
    frames = np.random.default_rng(1).integers(0, 256, (3, 60, 80, 3), dtype=np.uint8)
    x = preprocess_crop(frames)
    h, w = processed_size(60, 80)
    out = adapter(standin_dir).infer(x)
    expected = {
        "extrinsic": (3, 3, 4),
        "intrinsic": (3, 3, 3),
        "depth": (3, h, w),
        "depth_conf": (3, h, w),
        "world_points": (3, h, w, 3),
        "world_points_conf": (3, h, w),
    }
    assert {k: v.shape for k, v in out.items()} == expected
    assert all(v.dtype == np.float32 for v in out.values())
    assert all(np.isfinite(v).all() for v in out.values())
    assert (out["depth"] > 0).all() and (out["depth_conf"] >= 1).all() and (out["world_points_conf"] >= 1).all()


def test_outputs_are_the_models_own_predictions(standin_dir):
    ad = adapter(standin_dir)
    x = images()
    out = ad.infer(x)
    with torch.no_grad():
        ref = ad.load()(x)  # the stand-in's VGGT-style forward
    np.testing.assert_array_equal(out["depth"], ref["depth"][0, ..., 0].numpy())
    np.testing.assert_array_equal(out["depth_conf"], ref["depth_conf"][0].numpy())
    np.testing.assert_array_equal(out["world_points"], ref["world_points"][0].numpy())
    np.testing.assert_array_equal(out["world_points_conf"], ref["world_points_conf"][0].numpy())
    ext, k = pose_encoding_to_extri_intri(ref["pose_enc"][0].numpy(), (56, 84))
    np.testing.assert_allclose(out["extrinsic"], ext, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["intrinsic"], k, rtol=1e-6)


def test_known_poses_come_from_the_last_refinement_iteration(tmp_path):
    d = make_standin(tmp_path / "posed", fixed_pose_enc=POSES)
    h, w = 42, 70
    out = adapter(d).infer(images(s=3, h=h, w=w))
    ext, k = out["extrinsic"], out["intrinsic"]
    np.testing.assert_allclose(ext[0], [[1, 0, 0, 0.1], [0, 1, 0, 0.2], [0, 0, 1, 0.3]], atol=1e-6)
    np.testing.assert_allclose(ext[1], [[0, -1, 0, 1.0], [1, 0, 0, -1.0], [0, 0, 1, 0.5]], atol=1e-6)
    np.testing.assert_allclose(ext[2, :, :3], [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-6)
    np.testing.assert_allclose(k[0], [[w / 2, 0, w / 2], [0, h / 2, h / 2], [0, 0, 1]], rtol=1e-6)
    assert k[1, 0, 0] == pytest.approx(w / 2, rel=1e-6)
    assert k[1, 1, 1] == pytest.approx((h / 2) / math.tan(math.radians(30)), rel=1e-6)


def test_all_frames_go_through_one_forward(tmp_path):
    d = make_standin(tmp_path / "m")
    ad = adapter(d)
    ad.infer(images(s=5))
    assert [c["S"] for c in ad.load().aggregator.calls] == [5]


@pytest.mark.parametrize("pool, grid", [(1, (4, 6)), (2, (2, 3)), (3, (1, 2))])
def test_tokens_are_last_layer_patches_average_pooled(standin_dir, pool, grid):
    ad = adapter(standin_dir, keep_tokens=True, token_pool=pool)
    x = images(s=2, h=56, w=84)  # 4 x 6 patches
    out = ad.infer(x)
    with torch.no_grad():
        layers, psi = ad.load().aggregator(x[None])
    assert psi == 5
    patches = layers[-1][0, :, psi:].numpy().reshape(2, 4, 6, 32)  # [S, Hp, Wp, 2C]
    gh, gw = grid
    want = patches[:, : gh * pool, : gw * pool].reshape(2, gh, pool, gw, pool, 32).mean(axis=(2, 4))
    assert out["tokens"].shape == (2, gh, gw, 32) and out["tokens"].dtype == np.float32
    np.testing.assert_allclose(out["tokens"], want, rtol=1e-5, atol=1e-6)


def test_no_tokens_unless_asked(standin_dir):
    assert "tokens" not in adapter(standin_dir).infer(images(s=1))


def test_aggregator_under_autocast_heads_in_fp32(tmp_path):
    d = make_standin(tmp_path / "amp")
    ad = adapter(d, dtype="bf16")
    out = ad.infer(images(s=2))
    m = ad.load()
    assert m.aggregator.calls[-1]["autocast"] and m.aggregator.calls[-1]["autocast_dtype"] == torch.bfloat16
    for head in (m.camera_head, m.depth_head, m.point_head):
        assert head.calls[-1]["autocast"] is False
        assert head.calls[-1]["dtype"] == torch.float32
    assert all(v.dtype == np.float32 for v in out.values())
    ref = adapter(d, dtype="fp32").infer(images(s=2))
    np.testing.assert_allclose(out["depth"], ref["depth"], rtol=0.05)  # bf16 changes little


def test_cpu_auto_dtype_is_fp32_without_autocast(tmp_path):
    ad = adapter(make_standin(tmp_path / "m"))
    assert ad.resolved_dtype() == "fp32"
    ad.infer(images(s=1))
    assert ad.load().aggregator.calls[-1]["autocast"] is False


def test_rejects_images_not_s3hw_or_off_the_patch_grid(standin_dir):
    ad = adapter(standin_dir)
    with pytest.raises(ValueError, match=r"\[S, 3, H, W\]"):
        ad.infer(images()[None])
    with pytest.raises(ValueError, match="multiple of the patch size"):
        ad.infer(images(h=50))


def test_out_of_memory_propagates_after_freeing_the_cache(tmp_path, monkeypatch):
    freed = []
    monkeypatch.setattr(V, "_free_cuda_cache", lambda: freed.append(True))
    ad = adapter(make_standin(tmp_path / "small-gpu", oom_above_frames=2))
    assert ad.infer(images(s=2))["depth"].shape[0] == 2
    assert not freed
    with pytest.raises(torch.OutOfMemoryError, match="3 frames"):
        ad.infer(images(s=3))
    assert freed == [True]


def test_missing_vggt_module_gives_the_install_hint(tmp_path):
    ad = VGGTAdapter(VGGTSettings(model=str(tmp_path), model_class="navcache_no_such_vggt.models.vggt:VGGT"))
    with pytest.raises(NavcacheError, match=r"pip install git\+https://github\.com/facebookresearch/vggt"):
        ad.load()


def test_missing_class_and_missing_weights_are_navcache_errors(tmp_path, standin_dir):
    with pytest.raises(NavcacheError, match="no class 'NoSuchVGGT'"):
        VGGTAdapter(VGGTSettings(model=str(standin_dir), model_class="tests.standins.vggt_standin:NoSuchVGGT")).load()
    (tmp_path / "empty").mkdir()
    with pytest.raises(NavcacheError, match="cannot be loaded"):
        adapter(tmp_path / "empty").load()  # a folder without a checkpoint: OSError
    with pytest.raises(NavcacheError, match="cannot be loaded"):
        adapter(tmp_path / "missing").load()  # no such folder: the hub's ValueError


def test_load_returns_an_eval_model_once(standin_dir):
    ad = adapter(standin_dir)
    m = ad.load()
    assert isinstance(m, StandInVGGT) and not m.training
    assert not any(p.requires_grad for p in m.parameters())
    assert ad.load() is m


def test_identity_tracks_weights_and_output_options(tmp_path):
    i0 = adapter(make_standin(tmp_path / "s0", seed=0)).identity()
    assert i0["class"] == STANDIN and i0["dtype"] == "fp32" and i0["preprocess"]["mode"] == "crop"
    # same folder, other weights: the content fingerprint, not the path, must change
    i1 = adapter(make_standin(tmp_path / "s0", seed=1)).identity()
    assert i1["model"] == i0["model"] and i1["weights"] != i0["weights"]
    make_standin(tmp_path / "s0", seed=0)
    # pooling only matters when tokens are kept
    assert adapter(tmp_path / "s0", token_pool=3).identity() == i0
    assert adapter(tmp_path / "s0", keep_tokens=True, token_pool=3).identity() != adapter(tmp_path / "s0", keep_tokens=True).identity()


def test_provenance_marks_random_init(standin_dir):
    p = adapter(standin_dir).provenance()
    assert p["random_init"] is True and p["id"] == str(standin_dir) and p["architecture"] == STANDIN


def test_standin_is_deterministic_per_seed(tmp_path):
    x = images(s=2)
    a = adapter(make_standin(tmp_path / "a", seed=7)).infer(x)
    b = adapter(make_standin(tmp_path / "b", seed=7)).infer(x)
    c = adapter(make_standin(tmp_path / "c", seed=8)).infer(x)
    np.testing.assert_array_equal(a["depth"], b["depth"])
    assert not np.allclose(a["depth"], c["depth"])
