"""Flow matching as openpi's pi0 trains and samples it (``openpi/models/pi0.py``), in torch.

Convention (openpi's, the reverse of the pi0 paper): t = 1 is noise, t = 0 the actions.

    t   ~ Beta(1.5, 1) * 0.999 + 0.001          (never exactly 0)
    x_t = t * noise + (1 - t) * actions
    u_t = noise - actions                       (the velocity the model regresses)
    loss = mean of (v - u_t)^2 over valid steps (not ``is_pad``) and the unpadded action dims
    sampling: x_1 = noise, then ``num_steps`` Euler steps x <- x + dt * v(x, t), dt = -1 / num_steps

openpi averages over every step and padded dim; here padded steps (LeRobot's ``is_pad``) and the
zero-padded dims beyond the dataset's action dim are left out, so padding never pulls the loss.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

BETA_A, BETA_B = 1.5, 1.0
T_SCALE, T_MIN = 0.999, 0.001


def sample_time(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """[n] float32 times ``Beta(1.5, 1) * 0.999 + 0.001``.

    Beta(a, 1) has CDF x^a, so ``U^(1/a)`` with U uniform is an exact draw; unlike
    ``torch.distributions.Beta`` it takes a ``generator`` (seeded, reproducible evaluation).
    """
    u = torch.rand(n, generator=generator, device=device)
    return u.pow(1.0 / BETA_A) * T_SCALE + T_MIN


def interpolate(actions: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """actions, noise [B, H, A], t [B] -> (x_t, u_t), both [B, H, A]."""
    te = t[:, None, None].to(actions.dtype)
    return te * noise + (1 - te) * actions, noise - actions


def valid_mask(is_pad: torch.Tensor, action_dim: int, padded_dim: int) -> torch.Tensor:
    """is_pad [B, H] -> bool [B, H, padded_dim]: a step that is not padding, in one of the first ``action_dim`` dims."""
    dims = torch.arange(padded_dim, device=is_pad.device) < action_dim
    return (~is_pad)[:, :, None] & dims[None, None, :]


def masked_mse(v: torch.Tensor, u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (v - u)^2 over the True entries of ``mask`` (all [B, H, A]); 0 when there are none."""
    sq = (v.float() - u.float()).square() * mask
    return sq.sum() / mask.sum().clamp(min=1)


def euler_sample(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
                 num_steps: int = 10) -> torch.Tensor:
    """x_0 from x_1 = ``noise`` [B, H, A] by ``num_steps`` Euler steps of ``velocity(x_t, t [B]) -> [B, H, A]``.

    The times are ``1 - k / num_steps`` (computed, not accumulated, so the last step lands on 0
    whatever the float error of ``dt``); openpi's while loop runs the same ``num_steps`` steps.
    """
    x = noise
    dt = -1.0 / num_steps
    for k in range(num_steps):
        t = torch.full((noise.shape[0],), 1.0 - k / num_steps, device=noise.device, dtype=torch.float32)
        x = x + dt * velocity(x, t).to(x.dtype)
    return x
