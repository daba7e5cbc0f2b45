"""The trainable part: a connector MLP and a pi0- or pi05-style action expert (openpi ``models/pi0.py`` + ``gemma.py``).

    context tokens [B, T, D] (cached)  --connector: Linear -> GELU -> Linear-->  prefix [B, T, W]

``time_conditioning="mlp_mix"`` (pi0):
    state [B, A] --state_proj-->  1 suffix token
    x_t [B, H, A] --action_in_proj--> concat(time emb) --action_time_mlp (Linear, swish, Linear)--> H tokens
    transformer over [prefix, state, actions], ar = [0]*T + [1] + [1] + [0]*(H-1)

``time_conditioning="adarms"`` (pi05):
    time emb --time_mlp_in, swish, time_mlp_out, swish--> cond [B, W]
    x_t --action_in_proj--> H suffix tokens (no time mixed in)
    every norm of the suffix tokens is an adaptive RMSNorm of cond (``AdaRMSNorm``), and the
    residual it feeds is gated by cond; ar = [0]*(T+1) + [1] + [0]*(H-1)
    pi05 has no state token in the suffix: it writes the state into the prompt as discrete text
    tokens. There is no tokenizer here, so the state (normalised, continuous) is projected by
    ``state_proj`` to one more *prefix* token, seen by the prefix and cached with it like
    pi05's prompt.

Mask (``make_attn_mask``): the prefix attends only to the prefix, the pi0 state token to prefix +
itself, the action tokens to everything (each other included). So the prefix never sees the
suffix, and sampling runs the prefix once and keeps its keys/values (``prefix_cache``), as
openpi's KV cache does.

The blocks are Gemma's shape: RMSNorm, multi-query attention (``num_kv_heads`` shared key/value
heads of ``head_dim``, RoPE), a GELU-gated MLP. Prefix and suffix share the block weights (openpi
runs the prefix through PaliGemma's weights and the suffix through the expert's; here the prefix
is the connector's output, and one set of blocks serves both). Hand-written because pi0's block
mask, prefix cache and pi05's adaptive norms have no equivalent in a maintained torch transformer
module (``nn.TransformerEncoder`` has neither GQA nor RoPE, and transformers' Gemma would bring its
own embedding and mask handling); it is a few dozen lines over ``F.scaled_dot_product_attention``.

A frozen perception (``FrozenPerception``: an image encoder -> cached-style tokens) may sit in
front for the raw path (benchmark, tests): it is kept out of the trainable parameters.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import TIME_CONDITIONINGS

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


class AdaRMSNorm(nn.Module):
    """pi05's RMSNorm with an optional condition (openpi ``gemma.RMSNorm``), eps 1e-6, in float32.

        normed = x / sqrt(mean(x^2) + 1e-6)
        plain (cond None, or the first ``n_plain`` tokens):  normed * (1 + scale),  gate None / 1
        adaptive:  scale, shift, gate = split(modulation(cond), 3);  normed * (1 + scale) + shift, gate

    ``scale`` [W] and ``modulation`` (Linear cond_dim -> 3W) start at zero, weight and bias, as
    openpi's JAX model initialises them (``nn.Dense(kernel_init=zeros)``, Flax's zero bias; its
    PyTorch port zeroes only the weight, but loads converted weights). So at init every adaptive
    norm is the identity norm and every gated residual adds nothing: the suffix passes through
    the blocks untouched until the gates learn to open (DiT's adaLN-zero).
    """

    def __init__(self, width: int, cond_dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(width))
        self.modulation = nn.Linear(cond_dim, 3 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None, n_plain: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [B, N, W], cond [B, C] or None -> (y [B, N, W] in x's dtype, gate [B, N, W] or None);
        tokens [:n_plain] (the prefix) take the plain norm and a gate of 1."""
        xf = x.float()
        normed = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + 1e-6)
        plain = normed * (1 + self.scale.float())
        if cond is None:
            return plain.to(x.dtype), None
        scale, shift, gate = self.modulation(cond).float()[:, None, :].chunk(3, dim=-1)  # each [B, 1, W]
        ada = normed[:, n_plain:] * (1 + scale) + shift
        gate = gate.expand(-1, x.shape[1] - n_plain, -1)
        if n_plain:
            ada = torch.cat([plain[:, :n_plain], ada], dim=1)
            gate = torch.cat([torch.ones_like(plain[:, :n_plain]), gate], dim=1)
        return ada.to(x.dtype), gate.to(x.dtype)


class Block(nn.Module):
    """Pre-norm Gemma block: x + attn(norm(x)), then x + gelu-gated mlp(norm(x)); with ``adarms``
    the norms are ``AdaRMSNorm`` and each residual is gated: x + gate * f(norm(x, cond))."""

    def __init__(self, width: int, mlp_dim: int, num_heads: int, num_kv_heads: int, head_dim: int, adarms: bool = False):
        super().__init__()
        self.h, self.kv, self.hd, self.adarms = num_heads, num_kv_heads, head_dim, adarms
        if adarms:
            self.attn_norm, self.mlp_norm = AdaRMSNorm(width, width), AdaRMSNorm(width, width)
        else:
            self.attn_norm, self.mlp_norm = nn.RMSNorm(width, eps=1e-6), nn.RMSNorm(width, eps=1e-6)
        self.q = nn.Linear(width, num_heads * head_dim, bias=False)
        self.kv_proj = nn.Linear(width, 2 * num_kv_heads * head_dim, bias=False)
        self.o = nn.Linear(num_heads * head_dim, width, bias=False)
        self.gate = nn.Linear(width, 2 * mlp_dim, bias=False)
        self.down = nn.Linear(mlp_dim, width, bias=False)

    def _norm(self, norm: nn.Module, x, cond, n_plain):
        """(normed x, residual gate or None)."""
        return norm(x, cond, n_plain) if self.adarms else (norm(x), None)

    def keys_values(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, N, W] (prefix tokens: plain norm) -> (k, v) [B, kv, N, hd], k rotated."""
        B, N, _ = x.shape
        k, v = self.kv_proj(self._norm(self.attn_norm, x, None, 0)[0]).view(B, N, 2, self.kv, self.hd).unbind(2)
        return rope(k, positions).transpose(1, 2), v.transpose(1, 2)

    def forward(self, x, positions, mask, past: tuple[torch.Tensor, torch.Tensor] | None = None,
                cond: torch.Tensor | None = None, n_plain: int = 0):
        """x [B, N, W], positions [B, N], mask bool [B, N, S] with S = past length + N -> [B, N, W];
        cond [B, W] (adarms) conditions the norms of tokens [n_plain:]."""
        B, N, _ = x.shape
        h, g_attn = self._norm(self.attn_norm, x, cond, n_plain)
        q = rope(self.q(h).view(B, N, self.h, self.hd), positions).transpose(1, 2)
        k, v = self.kv_proj(h).view(B, N, 2, self.kv, self.hd).unbind(2)
        k, v = rope(k, positions).transpose(1, 2), v.transpose(1, 2)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        rep = self.h // self.kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        att = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask[:, None])
        x = _gated(x, self.o(att.transpose(1, 2).reshape(B, N, self.h * self.hd)), g_attn)
        h, g_mlp = self._norm(self.mlp_norm, x, cond, n_plain)
        g, lin = self.gate(h).chunk(2, dim=-1)
        return _gated(x, self.down(F.gelu(g, approximate="tanh") * lin), g_mlp)


def _gated(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """openpi's gated residual: x + y, or x + y * gate."""
    return x + y if gate is None else x + y * gate


class FlowExpert(nn.Module):
    """Connector + action expert. ``forward(context, state, x_t, t) -> v`` is one joint pass (training)."""

    def __init__(self, context_dim: int, action_dim: int, horizon: int, *, width: int, depth: int, mlp_dim: int,
                 num_heads: int, num_kv_heads: int, head_dim: int, connector_hidden: int = 0, time_conditioning: str = "mlp_mix"):
        super().__init__()
        if time_conditioning not in TIME_CONDITIONINGS:
            raise ValueError(f"time_conditioning must be one of {', '.join(TIME_CONDITIONINGS)}; got {time_conditioning!r}")
        self.horizon, self.action_dim, self.width = horizon, action_dim, width
        self.adarms = time_conditioning == "adarms"
        hidden = connector_hidden or width
        self.connector = nn.Sequential(nn.Linear(context_dim, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.state_proj = nn.Linear(action_dim, width)
        self.action_in_proj = nn.Linear(action_dim, width)
        if self.adarms:
            self.time_mlp_in, self.time_mlp_out = nn.Linear(width, width), nn.Linear(width, width)
        else:
            self.action_time_mlp_in = nn.Linear(2 * width, width)
            self.action_time_mlp_out = nn.Linear(width, width)
        self.blocks = nn.ModuleList(Block(width, mlp_dim, num_heads, num_kv_heads, head_dim, self.adarms) for _ in range(depth))
        self.final_norm = AdaRMSNorm(width, width) if self.adarms else nn.RMSNorm(width, eps=1e-6)
        self.action_out_proj = nn.Linear(width, action_dim)

    def connector_parameters(self) -> list[nn.Parameter]:
        return list(self.connector.parameters())

    def expert_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.connector.parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def embed_prefix(self, context: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """context [B, T, D], state [B, A] -> prefix tokens [B, T, W] (mlp_mix) or [B, T + 1, W] (adarms: the state token last)."""
        prefix = self.connector(context)
        if not self.adarms:
            return prefix
        return torch.cat([prefix, self.state_proj(state).to(prefix.dtype)[:, None, :]], dim=1)

    def embed_suffix(self, state: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """state [B, A], x_t [B, H, A], t [B] -> (suffix tokens [B, S, W], adaRMS cond [B, W] or None).

        mlp_mix: S = 1 + H (state token, then actions mixed with time); adarms: S = H, time in cond."""
        a = self.action_in_proj(x_t)
        te = posemb_sincos(t, self.width).to(a.dtype)
        if self.adarms:
            return a, F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(te))))
        te = te[:, None, :].expand(-1, x_t.shape[1], -1)
        a = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(torch.cat([a, te], dim=-1))))
        return torch.cat([self.state_proj(state)[:, None, :], a], dim=1), None

    @staticmethod
    def ar_mask(n_prefix: int, horizon: int, device=None) -> torch.Tensor:
        """bool [n_prefix + 1 + H]: pi0's ar_mask for [prefix, state, actions]."""
        return torch.tensor([False] * n_prefix + [True, True] + [False] * (horizon - 1), device=device)

    def suffix_ar(self, horizon: int, device=None) -> torch.Tensor:
        """bool [S]: the suffix's ar_mask (mlp_mix: state, then actions; adarms: actions alone)."""
        return self.ar_mask(0, horizon, device) if not self.adarms else torch.tensor([True] + [False] * (horizon - 1), device=device)

    def _run(self, x, positions, mask, past=None, cond=None, n_plain=0):
        for i, blk in enumerate(self.blocks):
            x = blk(x, positions, mask, None if past is None else past[i], cond, n_plain)
        return x

    def _out(self, x: torch.Tensor, cond: torch.Tensor | None, horizon: int) -> torch.Tensor:
        """Final norm (adaptive under adarms, as openpi's expert final norm) + action_out_proj of the last ``horizon`` tokens."""
        x = x[:, -horizon:]
        x = self.final_norm(x, cond)[0] if self.adarms else self.final_norm(x)
        return self.action_out_proj(x)

    def forward(self, context: torch.Tensor, state: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """context [B, T, D], state [B, A], x_t [B, H, A], t [B] -> v [B, H, A]."""
        prefix = self.embed_prefix(context, state)
        suffix, cond = self.embed_suffix(state, x_t, t)
        tokens = torch.cat([prefix, suffix.to(prefix.dtype)], dim=1)
        B, N, _ = tokens.shape
        P = prefix.shape[1]
        ar = torch.cat([torch.zeros(P, dtype=torch.bool, device=tokens.device), self.suffix_ar(x_t.shape[1], tokens.device)])
        mask = make_attn_mask(torch.ones(B, N, dtype=torch.bool, device=tokens.device), ar)
        positions = torch.arange(N, device=tokens.device).expand(B, N)
        return self._out(self._run(tokens, positions, mask, cond=cond, n_plain=P), cond, x_t.shape[1])

    def prefix_cache(self, context: torch.Tensor, state: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per block (k, v) [B, kv, P, hd] of the prefix alone (it never attends to the suffix)."""
        x = self.embed_prefix(context, state)
        B, P, _ = x.shape
        positions = torch.arange(P, device=x.device).expand(B, P)
        mask = torch.ones(B, P, P, dtype=torch.bool, device=x.device)
        cache = []
        for blk in self.blocks:
            cache.append(blk.keys_values(x, positions))
            x = blk(x, positions, mask)
        return cache

    def suffix_velocity(self, cache, state: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v [B, H, A] from the prefix's ``cache``: the suffix attends to the cached prefix and to itself by the mask."""
        s, cond = self.embed_suffix(state, x_t, t)
        B, S, _ = s.shape
        P = cache[0][0].shape[2]
        suffix_mask = make_attn_mask(torch.ones(B, S, dtype=torch.bool, device=s.device), self.suffix_ar(x_t.shape[1], s.device))
        mask = torch.cat([torch.ones(B, S, P, dtype=torch.bool, device=s.device), suffix_mask], dim=2)
        positions = P + torch.arange(S, device=s.device).expand(B, S)
        return self._out(self._run(s, positions, mask, past=cache, cond=cond), cond, x_t.shape[1])


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
