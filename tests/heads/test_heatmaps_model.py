"""The heatmaps model's parts on their own: convex upsampling against a plain per-pixel version,
the frozen LLM (never trained, no gradient reaches it), the metrics against hand-made cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from navcache.heads.heatmaps.configuration import HeatmapsConfig
from navcache.heads.heatmaps.model import HeatmapModel, convex_upsample, make_random_qwen2
from navcache.heads.heatmaps.train import distribution_metrics


def plain_convex_upsample(coarse: torch.Tensor, mask: torch.Tensor, r: int) -> torch.Tensor:
    """Pixel by pixel: fine (y, x) of cell (i, j) = sum_k softmax_k(mask[k, dy, dx]) * coarse[i+di, j+dj],
    the 3 x 3 neighbours clamped at the edges (replicate padding)."""
    b, c, h, w = coarse.shape
    out = torch.zeros(b, c, h * r, w * r, dtype=torch.float64)
    for n in range(b):
        for y in range(h * r):
            for x in range(w * r):
                i, j, dy, dx = y // r, x // r, y % r, x % r
                logits = torch.tensor([float(mask[n, k * r * r + dy * r + dx, i, j]) for k in range(9)], dtype=torch.float64)
                wts = torch.softmax(logits, 0)
                for k in range(9):
                    ii = min(max(i + k // 3 - 1, 0), h - 1)
                    jj = min(max(j + k % 3 - 1, 0), w - 1)
                    out[n, :, y, x] += wts[k] * coarse[n, :, ii, jj].double()
    return out


def test_convex_upsample_matches_the_per_pixel_definition():
    g = torch.Generator().manual_seed(0)
    r, h, w = 3, 4, 5
    coarse = torch.randn(2, 1, h, w, generator=g)
    mask = torch.randn(2, 9 * r * r, h, w, generator=g) * 2
    fast = convex_upsample(coarse, mask, r)
    assert fast.shape == (2, 1, h * r, w * r)
    torch.testing.assert_close(fast.double(), plain_convex_upsample(coarse, mask, r), atol=1e-5, rtol=1e-5)


def test_a_constant_coarse_map_upsamples_to_the_same_constant():
    r = 4
    mask = torch.randn(1, 9 * r * r, 6, 6, generator=torch.Generator().manual_seed(1)) * 5
    up = convex_upsample(torch.full((1, 1, 6, 6), -2.5), mask, r)
    torch.testing.assert_close(up, torch.full((1, 1, 24, 24), -2.5))


def _model(llm=None, fusion="cross_attention"):
    torch.manual_seed(0)
    return HeatmapModel(dv=8, dd=6, grid=4, image_size=(32, 32), d=16, fusion=fusion, heads=2, llm=llm)


def _inputs(n=3):
    g = torch.Generator().manual_seed(2)
    return (torch.randn(n, 5, 5, 8, generator=g), torch.randn(n, 7, 7, 6, generator=g),
            torch.randn(n, 5, 5, 8, generator=g), torch.randn(n, 7, 7, 6, generator=g))


def test_the_token_encoder_equals_norm_project_then_pool_per_token():
    """The encoder pools before its affine maps (cheaper); it must equal the definition: layer norm
    and Linear on every token, then the average pool onto the grid (non-divisible 5 -> 4, 7 -> 4)."""
    m = _model()
    with torch.no_grad():  # non-trivial affine parameters, so the reordering is really exercised
        for seq in (m.encode.vggt, m.encode.dino):
            seq[0].weight.normal_(generator=torch.Generator().manual_seed(3))
            seq[0].bias.normal_(generator=torch.Generator().manual_seed(4))
    va, da, _, _ = _inputs()

    def per_token(seq, x):  # [B, h, w, D] -> [B, G*G, d]
        y = seq(x)  # LayerNorm + Linear on each token
        return F.adaptive_avg_pool2d(y.permute(0, 3, 1, 2), 4).flatten(2).transpose(1, 2)

    expected = per_token(m.encode.vggt, va) + per_token(m.encode.dino, da) + m.encode.pos
    f = m.pool(va, da)
    torch.testing.assert_close(m.encode(f["vggt_n"], f["dino_n"]), expected, atol=1e-5, rtol=1e-5)
    ua = F.normalize(F.adaptive_avg_pool2d(va.permute(0, 3, 1, 2), 4).flatten(2).transpose(1, 2), dim=-1)
    torch.testing.assert_close(f["vggt_u"], ua)


@pytest.mark.parametrize("fusion", ["concat_mlp", "cross_attention"])
def test_shapes_and_heatmap_mass(fusion):
    m = _model(fusion=fusion)
    out = m.from_tokens(*_inputs())
    assert out["logits"].shape == (3, 4 * 4 + 5) and out["mask"].shape == (3, 9 * 8 * 8, 4, 4)
    hm = m.heatmap(out)
    assert hm.shape == (3, 32, 32)
    inview = out["logits"].softmax(-1)[:, :16].sum(-1)
    torch.testing.assert_close(hm.sum((1, 2)), inview)
    pooled = m.pooled_fine(out).exp()
    torch.testing.assert_close(pooled.sum(-1), torch.ones(3))


@pytest.mark.slow  # building the Qwen2 takes seconds
def test_the_frozen_llm_is_never_trained_and_gets_no_gradient():
    llm = make_random_qwen2(seed=0)
    before = {k: v.clone() for k, v in llm.state_dict().items()}
    m = _model(llm=llm)
    torch.nn.init.normal_(m.readout[1].weight)  # zero at init (the prior): give the LLM's outputs a path to the loss
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert not any(p is q for p in trainable for q in llm.parameters())
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    m.train()
    assert not llm.training  # frozen: eval mode whatever the loop asks
    out = m.from_tokens(*_inputs())
    t = torch.softmax(torch.randn(3, 21), -1)
    loss = -(t * out["logits"].log_softmax(-1)).sum(-1).mean()
    loss.backward()
    assert all(p.grad is None for p in llm.parameters())
    assert m.llm_in.weight.grad is not None and m.llm_in.weight.grad.abs().sum() > 0  # the gradient passes through it
    opt.step()
    for k, v in llm.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the same seed gives the same weights whatever the global RNG did
    torch.manual_seed(123)
    again = make_random_qwen2(seed=0).state_dict()
    assert all(torch.equal(again[k], before[k]) for k in before)


def test_untrained_model_predicts_its_prior():
    m = _model()
    with torch.no_grad():
        m.prior.copy_(torch.linspace(-1, 1, 21))
    out = m.from_tokens(*_inputs())
    torch.testing.assert_close(out["logits"], torch.linspace(-1, 1, 21).expand(3, 21))


def test_metrics_on_hand_made_distributions():
    t = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0]])
    # C = 7: two "grid" cells then the 5 ring cells (left is index 2)
    p = torch.tensor([[0.1, 0.6, 0.1, 0.1, 0.05, 0.025, 0.025], [0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]])
    m = distribution_metrics(p.log(), t)
    ce = [-math.log(0.6), -(0.5 * math.log(0.4) + 0.5 * math.log(0.1))]
    assert m["ce"] == pytest.approx(sum(ce) / 2, rel=1e-5)
    assert m["kl"] == pytest.approx((ce[0] + ce[1] - math.log(2)) / 2, rel=1e-5)
    assert m["top1_hit"] == 1.0
    # only pair 2 has out-of-view mass, all in "below" (ring index 3): 0.1 of its 0.5 ring mass
    assert m["ring_dir"] == pytest.approx(0.2, rel=1e-5)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="fusion"):
        HeatmapsConfig(fusion="sum")
    with pytest.raises(ValueError, match="d_model"):
        HeatmapsConfig(d_model=30, heads=4)


def test_camera_cues_of_hand_made_cameras():
    """A at the origin looking along +z; B 2 m to A's right (+x), turned 90 degrees to look along A's +x."""
    from navcache.heads.heatmaps.data import N_POSE, median_depth, pair_pose

    r_b = torch.tensor([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]).numpy()  # rows: B's axes in world
    centre_b = np.array([2.0, 0.0, 0.0])
    ext = np.stack([np.hstack([np.eye(3), np.zeros((3, 1))]), np.hstack([r_b, -(r_b @ centre_b)[:, None]])]).astype(np.float32)
    depth = np.stack([np.full((4, 4), 4.0), np.full((4, 4), 2.0)]).astype(np.float16)
    conf = np.ones((2, 4, 4), np.float16)
    conf[0, 0, 0] = 0  # an unconfident pixel is ignored
    depth[0, 0, 0] = 100
    scale = median_depth(depth, conf)
    np.testing.assert_allclose(scale, [4.0, 2.0])
    cues = pair_pose(ext, scale, np.array([0, 1]), np.array([1, 0]))
    assert cues.shape == (2, N_POSE)
    np.testing.assert_allclose(cues[0, :9].reshape(3, 3) @ np.array([0, 0, 1.0]), [1, 0, 0], atol=1e-6)  # B's forward in A: +x
    np.testing.assert_allclose(cues[0, 9:12], [0.5, 0, 0], atol=1e-6)  # 2 m right, in units of A's 4 m median depth
    np.testing.assert_allclose(cues[0, 12:], [0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(cues[1, 9:12], [0, 0, -1.0], atol=1e-6)  # from B, A lies 2 m straight behind: along B's -z
    np.testing.assert_allclose(cues[1, 13], 2.0, atol=1e-6)


def test_a_model_with_camera_cues_needs_them():
    torch.manual_seed(0)
    m = HeatmapModel(dv=8, dd=6, grid=4, image_size=(32, 32), d=16, heads=2, n_pose=14)
    with pytest.raises(ValueError, match="camera cues"):
        m.from_tokens(*_inputs())
    out = m.from_tokens(*_inputs(), torch.randn(3, 14))
    assert out["logits"].shape == (3, 21)
