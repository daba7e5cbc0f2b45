"""flow-expert pieces against independent, straightforward implementations (no caches needed)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from navcache.heads.flow_expert.data import Normaliser, pad_dims
from navcache.heads.flow_expert.flow import euler_sample, interpolate, masked_mse, sample_time, valid_mask
from navcache.heads.flow_expert.model import AdaRMSNorm, FlowExpert, FrozenPerception, PerceptionPolicy, make_attn_mask, posemb_sincos
from navcache.heads.flow_expert.train import FlowExpertTask


def test_time_samples_follow_beta_1p5_1_scaled():
    t = sample_time(200_000, torch.Generator().manual_seed(0)).double().numpy()
    ref = np.random.default_rng(1).beta(1.5, 1.0, 200_000) * 0.999 + 0.001  # numpy's own Beta sampler
    assert t.min() >= 0.001 and t.max() <= 1.0
    # Beta(1.5, 1): mean 0.6, variance 1.5 / (2.5^2 * 3.5); then the affine map
    assert abs(t.mean() - (0.6 * 0.999 + 0.001)) < 3e-3
    assert abs(t.var() - 0.999**2 * 1.5 / (6.25 * 3.5)) < 2e-3
    # two-sample Kolmogorov-Smirnov distance against numpy's sampler (critical ~0.0043 at 1e-3, n = 2e5 each)
    grid = np.linspace(0, 1, 2001)
    ks = np.abs(np.searchsorted(np.sort(t), grid) - np.searchsorted(np.sort(ref), grid)).max() / len(t)
    assert ks < 0.0065


def test_interpolation_and_target_velocity():
    g = torch.Generator().manual_seed(0)
    a, n, t = torch.randn(3, 4, 2, generator=g), torch.randn(3, 4, 2, generator=g), torch.tensor([0.0, 0.5, 1.0])
    x, u = interpolate(a, n, t)
    for i, ti in enumerate([0.0, 0.5, 1.0]):
        assert torch.allclose(x[i], ti * n[i] + (1 - ti) * a[i])
    assert torch.equal(u, n - a)
    assert torch.allclose(x[0], a[0]) and torch.allclose(x[2], n[2])


def test_masked_loss_counts_only_valid_steps_and_real_dims():
    g = torch.Generator().manual_seed(0)
    v, u = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    is_pad = torch.tensor([[False, False, True], [False, True, True]])
    loss = masked_mse(v, u, valid_mask(is_pad, action_dim=2, padded_dim=4))
    total, count = 0.0, 0
    for b in range(2):
        for h in range(3):
            if is_pad[b, h]:
                continue
            for d in range(2):
                total += float(v[b, h, d] - u[b, h, d]) ** 2
                count += 1
    assert count == 6 and math.isclose(float(loss), total / count, rel_tol=1e-6)
    # what lies in padding never moves it
    v2 = v.clone()
    v2[0, 2], v2[:, :, 2:] = 1e6, -1e6
    assert math.isclose(float(masked_mse(v2, u, valid_mask(is_pad, 2, 4))), float(loss), rel_tol=1e-6)


def test_euler_on_the_straight_flow_field_lands_exactly_on_the_target():
    """v(x, t) = (x - a) / t is the flow-matching field of a single target a: the ODE's solution is the
    line x_t = t * x_1 + (1 - t) * a, which Euler follows exactly (each step stays on it)."""
    g = torch.Generator().manual_seed(0)
    a, noise = torch.randn(2, 5, 3, generator=g, dtype=torch.float64), torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    seen = []

    def field(x, t):
        seen.append(float(t[0]))
        tt = t.double()[:, None, None]
        # on the line at every step: x = t * noise + (1 - t) * a
        assert torch.allclose(x, tt * noise + (1 - tt) * a, atol=1e-6)  # t is float32
        return (x - a) / tt

    out = euler_sample(field, noise, num_steps=10)
    assert torch.allclose(out, a, atol=1e-6)
    assert np.allclose(seen, [1.0 - k / 10 for k in range(10)])
    # and a constant field: x_0 = x_1 - c, openpi's dt = -0.1 ten times
    c = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(euler_sample(lambda x, t: c, noise, 10), noise - c, atol=1e-12)


def test_attention_mask_is_pi0s():
    """prefix (3 tokens) never sees the suffix; state sees prefix + itself; actions see everything."""
    T, H = 3, 4
    ar = FlowExpert.ar_mask(T, H)
    m = make_attn_mask(torch.ones(1, T + 1 + H, dtype=torch.bool), ar)[0]
    want = torch.zeros(T + 1 + H, T + 1 + H, dtype=torch.bool)
    want[:T, :T] = True  # prefix: full attention among itself
    want[T, : T + 1] = True  # state: prefix and itself
    want[T + 1:, :] = True  # actions: all
    assert torch.equal(m, want)
    # big_vision's examples: causal, prefix-lm; padding is never attended nor attends
    causal = make_attn_mask(torch.ones(1, 4, dtype=torch.bool), torch.ones(4, dtype=torch.bool))[0]
    assert torch.equal(causal, torch.tril(torch.ones(4, 4, dtype=torch.bool)))
    pad = make_attn_mask(torch.tensor([[True, True, False]]), torch.zeros(3, dtype=torch.bool))[0]
    assert not pad[2].any() and not pad[:, 2].any() and pad[:2, :2].all()


def test_posemb_sincos_periods():
    t = torch.tensor([0.0, 0.25, 1.0])
    e = posemb_sincos(t, 8, 4e-3, 4.0)
    period = 4e-3 * (4.0 / 4e-3) ** np.linspace(0, 1, 4)
    arg = 2 * np.pi * t.double().numpy()[:, None] / period
    want = np.concatenate([np.sin(arg), np.cos(arg)], 1)
    assert np.allclose(e.numpy(), want, atol=1e-6)


def _tiny(seed=0, context_dim=6, horizon=4, action_dim=3, time_conditioning="mlp_mix"):
    torch.manual_seed(seed)
    return FlowExpert(context_dim, action_dim, horizon, width=16, depth=2, mlp_dim=32, num_heads=4, num_kv_heads=2, head_dim=4,
                      time_conditioning=time_conditioning)


def test_adaptive_rmsnorm_is_openpis_formula():
    """openpi gemma.RMSNorm, written out in numpy float64: var = mean(x^2); normed = x / sqrt(var + 1e-6);
    with a cond, [scale | shift | gate] = cond @ W + b and y = normed * (1 + scale) + shift; without,
    y = normed * (1 + scale_param). Prefix tokens (the first ``n_plain``) take the plain form, gate 1."""
    torch.manual_seed(0)
    norm = AdaRMSNorm(6, 4)
    assert not norm.modulation.weight.any() and not norm.modulation.bias.any() and not norm.scale.any()  # openpi: zero init
    with torch.no_grad():
        for p in norm.parameters():
            p.normal_()
    g = torch.Generator().manual_seed(1)
    x, cond = torch.randn(2, 5, 6, generator=g) * 3, torch.randn(2, 4, generator=g)
    xd, cd = x.double().numpy(), cond.double().numpy()
    W, b = norm.modulation.weight.detach().double().numpy().T, norm.modulation.bias.detach().double().numpy()
    normed = xd / np.sqrt((xd ** 2).mean(-1, keepdims=True) + 1e-6)
    mod = cd @ W + b  # [B, 18]
    scale, shift, gate = mod[:, None, :6], mod[:, None, 6:12], mod[:, None, 12:]
    with torch.no_grad():
        y, gt = norm(x, cond, n_plain=2)
        y0, g0 = norm(x)
        yb, gb = norm(x.bfloat16(), cond)
    plain = normed * (1 + norm.scale.detach().double().numpy())
    assert np.allclose(y[:, 2:].double().numpy(), (normed * (1 + scale) + shift)[:, 2:], atol=1e-5)
    assert np.allclose(gt[:, 2:].double().numpy(), np.broadcast_to(gate, (2, 3, 6)), atol=1e-5)
    assert np.allclose(y[:, :2].double().numpy(), plain[:, :2], atol=1e-5) and (gt[:, :2] == 1).all()
    assert g0 is None and np.allclose(y0.double().numpy(), plain, atol=1e-5)
    # half precision in, half precision out; the statistics in float32
    assert yb.dtype == gb.dtype == torch.bfloat16 and np.allclose(yb.double().numpy(), normed * (1 + scale) + shift, atol=0.1)


def test_adarms_expert_at_init_is_openpis_zero_gated_expert():
    """Zero-initialised modulation: every gated residual adds nothing and every adaptive norm is the
    plain RMS norm, so at init v = action_out_proj(rmsnorm(action_in_proj(x_t))), whatever t, the
    context and the state (numpy, from the two projections' weights)."""
    m = _tiny(time_conditioning="adarms").eval()
    assert not hasattr(m, "action_time_mlp_in") and m.time_mlp_in.in_features == m.time_mlp_out.out_features == 16
    g = torch.Generator().manual_seed(2)
    ctx, st, x, t = torch.randn(2, 5, 6, generator=g), torch.randn(2, 3, generator=g), torch.randn(2, 4, 3, generator=g), torch.rand(2, generator=g)
    w = {k: v.detach().double().numpy() for k, v in m.state_dict().items()}
    a = x.double().numpy() @ w["action_in_proj.weight"].T + w["action_in_proj.bias"]
    want = a / np.sqrt((a ** 2).mean(-1, keepdims=True) + 1e-6) @ w["action_out_proj.weight"].T + w["action_out_proj.bias"]
    with torch.no_grad():
        assert np.allclose(m(ctx, st, x, t).double().numpy(), want, atol=1e-5)
        assert np.allclose(m(ctx + 1, st * 2, x, 1 - t).double().numpy(), want, atol=1e-5)


def test_adarms_cached_pass_equals_the_joint_one_and_time_enters_by_the_norms():
    m = _tiny(time_conditioning="adarms").eval()
    with torch.no_grad():  # open the gates: a trained expert's modulation
        for blk in [*m.blocks, m.final_norm]:
            for norm in ([blk.attn_norm, blk.mlp_norm] if blk is not m.final_norm else [blk]):
                norm.modulation.weight.normal_(0, 0.3)
                norm.modulation.bias.normal_(0, 0.3)
    g = torch.Generator().manual_seed(1)
    ctx, st, x, t = torch.randn(2, 5, 6, generator=g), torch.randn(2, 3, generator=g), torch.randn(2, 4, 3, generator=g), torch.rand(2, generator=g)
    with torch.no_grad():
        joint = m(ctx, st, x, t)
        cache = m.prefix_cache(ctx, st)
        assert cache[0][0].shape[2] == 6  # 5 context tokens + the state token: the prefix
        assert torch.allclose(m.suffix_velocity(cache, st, x, t), joint, atol=1e-5)
        assert not torch.allclose(m(ctx, st, x, 1 - t), joint)  # time only through the adaptive norms
        assert not torch.allclose(m(ctx, st + 1, x, t), joint)  # the state through the prefix
        assert not torch.allclose(m(ctx + 1, st, x, t), joint)
    with pytest.raises(ValueError, match="mlp_mix, adarms"):
        _tiny(time_conditioning="adaln")


def test_prefix_ignores_the_suffix_and_the_cached_pass_equals_the_joint_one():
    m = _tiny().eval()
    g = torch.Generator().manual_seed(1)
    ctx, st, x, t = torch.randn(2, 5, 6, generator=g), torch.randn(2, 3, generator=g), torch.randn(2, 4, 3, generator=g), torch.rand(2, generator=g)
    joint = m(ctx, st, x, t)
    cached = m.suffix_velocity(m.prefix_cache(ctx, st), st, x, t)
    assert torch.allclose(joint, cached, atol=1e-5)
    # changing the actions cannot change what the prefix computes; the context does change the actions' output
    assert [torch.equal(a[0], b[0]) for a, b in zip(m.prefix_cache(ctx, st), m.prefix_cache(ctx, st))] == [True, True]
    assert not torch.allclose(m(ctx + 1, st, x, t), joint)


def test_frozen_perception_gets_no_gradient_and_no_optimizer_slot():
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(0)
    enc = DINOv3ViTModel(DINOv3ViTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         patch_size=8, num_register_tokens=4, image_size=32))
    perception = FrozenPerception(enc, grid=2, num_prefix_tokens=5)
    policy = PerceptionPolicy(perception, _tiny(context_dim=16))
    policy.train()
    assert not perception.training  # frozen: always eval
    pixels, state = torch.randn(2, 3, 32, 32), torch.randn(2, 3)
    x_t, t = torch.randn(2, 4, 3), torch.rand(2)
    policy(pixels, state, x_t, t).square().mean().backward()
    assert all(p.grad is None for p in perception.parameters())
    assert all(p.grad is not None for p in policy.expert.parameters())
    task = FlowExpertTask.__new__(FlowExpertTask)
    task.cfg = type("C", (), {"connector_lr": 1e-3, "expert_lr": 1e-4})()
    groups = task.param_groups(policy)
    held = {id(p) for g in groups for p in g["params"]}
    assert not held & {id(p) for p in perception.parameters()}
    assert held == {id(p) for p in policy.expert.parameters()}
    assert [g["lr"] for g in groups] == [1e-3, 1e-4]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in policy.expert.connector.parameters()}


@pytest.mark.parametrize("kind", ["zscore", "quantile"])
def test_normaliser_matches_openpi_formulas_and_inverts(kind):
    stats = {"mean": [1.0, -2.0], "std": [2.0, 0.5], "q01": [-3.0, -4.0], "q99": [5.0, 0.0]}
    x = np.array([[0.5, -1.0], [3.0, -3.5]])
    n = Normaliser(kind, stats).normalise(x)
    if kind == "zscore":
        want = (x - np.array(stats["mean"])) / (np.array(stats["std"]) + 1e-6)
    else:
        want = (x - np.array(stats["q01"])) / (np.array(stats["q99"]) - np.array(stats["q01"]) + 1e-6) * 2 - 1
    assert np.allclose(n, want, atol=1e-6)
    assert np.allclose(Normaliser(kind, stats).unnormalise(torch.from_numpy(n)).numpy(), x, atol=1e-5)
    assert pad_dims(n, 4, "x").shape == (2, 4) and (pad_dims(n, 4, "x")[:, 2:] == 0).all()
    with pytest.raises(ValueError, match="max_action_dim"):
        pad_dims(n, 1, "state")


def test_reads_cover_every_context_dataset():
    """What ``navcache train flow-expert`` brings up to date (``registry.reads``): robot_meta of the
    dataset and the context cache of each context dataset, so a second camera needs no ``extract`` first."""
    from navcache.heads import registry
    from navcache.heads.flow_expert import load_config

    head = registry.get("flow-expert")
    cfg = load_config(None, "demo", context_datasets=["demo_lerobot", "demo_lerobot_left"])
    got = registry.reads(head, cfg.dataset, cfg.splits, cfg)
    assert sorted(got) == sorted([(d, s, spec) for s in ("train", "val") for d, spec in
                                  (("demo_lerobot", "robot_meta"), ("demo_lerobot", "frame_features"), ("demo_lerobot_left", "frame_features"))])
    # no config (predict): the dataset's own caches
    assert sorted(registry.reads(head, "other", ["val"])) == [("other", "val", "frame_features"), ("other", "val", "robot_meta")]
    # a head without its own reads keeps READS for the dataset
    assert registry.reads(registry.get("velocity-head"), "demo_vamos", ["val"]) == [
        ("demo_vamos", "val", spec) for spec in registry.get("velocity-head").READS]
