"""The trainable part: a connector MLP and a pi0-style action expert (openpi ``models/pi0.py`` + ``gemma.py``).

    context tokens [B, T, D] (cached)  --connector: Linear -> GELU -> Linear-->  prefix [B, T, W]
    state [B, A] --state_proj-->  1 token             \\
    x_t [B, H, A] --action_in_proj--> concat(time emb) --action_time_mlp (Linear, swish, Linear)--> H tokens
    transformer over [prefix, state, actions] with pi0's block mask  --action_out_proj-->  v [B, H, A]

Mask (``make_attn_mask`` with ar = [0]*T + [1] + [1] + [0]*(H-1)): the prefix attends only to the
prefix, the state token to prefix + itself, the action tokens to everything (each other included).
So the prefix never sees the suffix, and sampling runs the prefix once and keeps its keys/values
(``prefix_cache``), as openpi's KV cache does.

The blocks are Gemma's shape: RMSNorm, multi-query attention (``num_kv_heads`` shared key/value
heads of ``head_dim``, RoPE), a GELU-gated MLP. Hand-written because pi0's block mask and prefix
cache have no equivalent in a maintained torch transformer module (``nn.TransformerEncoder`` has
neither GQA nor RoPE, and transformers' Gemma would bring its own embedding and mask handling); it
is a few dozen lines over ``F.scaled_dot_product_attention`` and ``nn.RMSNorm``.

A frozen perception (``FrozenPerception``: an image encoder -> cached-style tokens) may sit in
front for the raw path (benchmark, tests): it is kept out of the trainable parameters.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ROPE_WAVELENGTH = 10_000.0


def make_attn_mask(input_mask: torch.Tensor, ar_mask: torch.Tensor) -> torch.Tensor:
    """input_mask bool [B, N] (False: padding), ar_mask bool [N] or [B, N] -> bool [B, N, N] (query, key).

    Query i may attend key j when j is a real token and cumsum(ar)[j] <= cumsum(ar)[i]: a True in
    ``ar_mask`` starts a block that earlier tokens cannot see (openpi / big_vision semantics).
    """
    ar = torch.broadcast_to(ar_mask, input_mask.shape).long()
    c = torch.cumsum(ar, dim=1)
    allowed = c[:, None, :] <= c[:, :, None]
    return allowed & input_mask[:, None, :] & input_mask[:, :, None]


def posemb_sincos(t: torch.Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0) -> torch.Tensor:
    """t [B] -> [B, dim]: sin then cos of 2*pi*t/period, periods geometric from ``min_period`` to ``max_period``."""
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    frac = torch.linspace(0.0, 1.0, dim // 2, device=t.device, dtype=torch.float64)
    period = min_period * (max_period / min_period) ** frac
    x = t.double()[:, None] * (2 * math.pi / period)[None, :]
    return torch.cat([torch.sin(x), torch.cos(x)], dim=-1).float()


def rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [B, N, heads, hd], positions [B, N] -> x rotated (first half / second half pairs, as Gemma)."""
    half = x.shape[-1] // 2
    freq = ROPE_WAVELENGTH ** (-torch.arange(half, device=x.device, dtype=torch.float32) * 2 / x.shape[-1])
    ang = positions.float()[..., None] * freq  # [B, N, half]
    sin, cos = torch.sin(ang)[:, :, None, :], torch.cos(ang)[:, :, None, :]
    a, b = x[..., :half].float(), x[..., half:].float()
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1).to(x.dtype)


class Block(nn.Module):
    """Pre-norm Gemma block: x + attn(norm(x)), then x + gelu-gated mlp(norm(x))."""

    def __init__(self, width: int, mlp_dim: int, num_heads: int, num_kv_heads: int, head_dim: int):
        super().__init__()
        self.h, self.kv, self.hd = num_heads, num_kv_heads, head_dim
        self.attn_norm, self.mlp_norm = nn.RMSNorm(width, eps=1e-6), nn.RMSNorm(width, eps=1e-6)
        self.q = nn.Linear(width, num_heads * head_dim, bias=False)
        self.kv_proj = nn.Linear(width, 2 * num_kv_heads * head_dim, bias=False)
        self.o = nn.Linear(num_heads * head_dim, width, bias=False)
        self.gate = nn.Linear(width, 2 * mlp_dim, bias=False)
        self.down = nn.Linear(mlp_dim, width, bias=False)

    def keys_values(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, N, W] -> (k, v) [B, kv, N, hd], k rotated."""
        B, N, _ = x.shape
        k, v = self.kv_proj(self.attn_norm(x)).view(B, N, 2, self.kv, self.hd).unbind(2)
        return rope(k, positions).transpose(1, 2), v.transpose(1, 2)

    def forward(self, x, positions, mask, past: tuple[torch.Tensor, torch.Tensor] | None = None):
        """x [B, N, W], positions [B, N], mask bool [B, N, S] with S = past length + N -> [B, N, W]."""
        B, N, _ = x.shape
        q = rope(self.q(self.attn_norm(x)).view(B, N, self.h, self.hd), positions).transpose(1, 2)
        k, v = self.keys_values(x, positions)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        rep = self.h // self.kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        att = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask[:, None])
        x = x + self.o(att.transpose(1, 2).reshape(B, N, self.h * self.hd))
        g, lin = self.gate(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.gelu(g, approximate="tanh") * lin)


class FlowExpert(nn.Module):
    """Connector + action expert. ``forward(context, state, x_t, t) -> v`` is one joint pass (training)."""

    def __init__(self, context_dim: int, action_dim: int, horizon: int, *, width: int, depth: int, mlp_dim: int,
                 num_heads: int, num_kv_heads: int, head_dim: int, connector_hidden: int = 0):
        super().__init__()
        self.horizon, self.action_dim, self.width = horizon, action_dim, width
        hidden = connector_hidden or width
        self.connector = nn.Sequential(nn.Linear(context_dim, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.state_proj = nn.Linear(action_dim, width)
        self.action_in_proj = nn.Linear(action_dim, width)
        self.action_time_mlp_in = nn.Linear(2 * width, width)
        self.action_time_mlp_out = nn.Linear(width, width)
        self.blocks = nn.ModuleList(Block(width, mlp_dim, num_heads, num_kv_heads, head_dim) for _ in range(depth))
        self.final_norm = nn.RMSNorm(width, eps=1e-6)
        self.action_out_proj = nn.Linear(width, action_dim)

    def connector_parameters(self) -> list[nn.Parameter]:
        return list(self.connector.parameters())

    def expert_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.connector.parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def embed_suffix(self, state: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """state [B, A], x_t [B, H, A], t [B] -> suffix tokens [B, 1 + H, W] (pi0: state token, then actions mixed with time)."""
        a = self.action_in_proj(x_t)
        te = posemb_sincos(t, self.width).to(a.dtype)[:, None, :].expand(-1, x_t.shape[1], -1)
        a = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(torch.cat([a, te], dim=-1))))
        return torch.cat([self.state_proj(state)[:, None, :], a], dim=1)

    @staticmethod
    def ar_mask(n_prefix: int, horizon: int, device=None) -> torch.Tensor:
        """bool [n_prefix + 1 + H]: pi0's ar_mask for [prefix, state, actions]."""
        return torch.tensor([False] * n_prefix + [True, True] + [False] * (horizon - 1), device=device)

    def _run(self, x, positions, mask, past=None):
        for i, blk in enumerate(self.blocks):
            x = blk(x, positions, mask, None if past is None else past[i])
        return x

    def forward(self, context: torch.Tensor, state: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """context [B, T, D], state [B, A], x_t [B, H, A], t [B] -> v [B, H, A]."""
        prefix = self.connector(context)
        tokens = torch.cat([prefix, self.embed_suffix(state, x_t, t).to(prefix.dtype)], dim=1)
        B, N, _ = tokens.shape
        mask = make_attn_mask(torch.ones(B, N, dtype=torch.bool, device=tokens.device), self.ar_mask(prefix.shape[1], x_t.shape[1], tokens.device))
        positions = torch.arange(N, device=tokens.device).expand(B, N)
        out = self.final_norm(self._run(tokens, positions, mask))
        return self.action_out_proj(out[:, -x_t.shape[1]:])

    def prefix_cache(self, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per block (k, v) [B, kv, T, hd] of the prefix alone (it never attends to the suffix)."""
        x = self.connector(context)
        B, T, _ = x.shape
        positions = torch.arange(T, device=x.device).expand(B, T)
        mask = torch.ones(B, T, T, dtype=torch.bool, device=x.device)
        cache = []
        for blk in self.blocks:
            cache.append(blk.keys_values(x, positions))
            x = blk(x, positions, mask)
        return cache

    def suffix_velocity(self, cache, state: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v [B, H, A] from the prefix's ``cache``: the suffix attends to the cached prefix and to itself by pi0's mask."""
        s = self.embed_suffix(state, x_t, t)
        B, S, _ = s.shape
        T = cache[0][0].shape[2]
        ar = self.ar_mask(0, x_t.shape[1], s.device)
        suffix_mask = make_attn_mask(torch.ones(B, S, dtype=torch.bool, device=s.device), ar)
        mask = torch.cat([torch.ones(B, S, T, dtype=torch.bool, device=s.device), suffix_mask], dim=2)
        positions = T + torch.arange(S, device=s.device).expand(B, S)
        out = self.final_norm(self._run(s, positions, mask, past=cache))
        return self.action_out_proj(out[:, -x_t.shape[1]:])


class FrozenPerception(nn.Module):
    """A frozen image encoder turned into context tokens like the frame-features cache's
    [cls, G x G pooled patch tokens]: pixels float [B, 3, h, w] (normalised) -> [B, 1 + G*G, D].

    Its parameters never require grad and it runs under ``torch.no_grad``, so no optimizer
    group can hold them and no gradient reaches them."""

    def __init__(self, encoder: nn.Module, grid: int, num_prefix_tokens: int):
        super().__init__()
        self.encoder, self.grid, self.skip = encoder.eval(), grid, num_prefix_tokens
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):  # always eval: a frozen encoder keeps its inference behaviour
        return super().train(False)

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h = self.encoder(pixel_values=pixels).last_hidden_state  # [B, 1 + regs + P, D]
        cls, patches = h[:, 0], h[:, self.skip:]
        side = int(round(patches.shape[1] ** 0.5))
        grid = patches.transpose(1, 2).reshape(h.shape[0], -1, side, side)
        pooled = F.adaptive_avg_pool2d(grid.float(), self.grid).flatten(2).transpose(1, 2)  # [B, G*G, D]
        return torch.cat([cls[:, None].float(), pooled], dim=1)


class PerceptionPolicy(nn.Module):
    """Frozen perception in front of the trainable expert (the raw path: pixels in, no cache)."""

    def __init__(self, perception: FrozenPerception, expert: FlowExpert):
        super().__init__()
        self.perception, self.expert = perception, expert

    def forward(self, pixels, state, x_t, t):
        """pixels [B, 3, h, w] -> v [B, H, A]."""
        return self.expert(self.perception(pixels), state, x_t, t)
