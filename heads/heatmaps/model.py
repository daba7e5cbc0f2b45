"""The heatmaps model: where does keyframe B's content appear in keyframe A's first-person view?

    tokens of A, B --TokenEncoder--> [G*G, d] each (+ the pair's camera cues, embedded)
        --fusion (A's cells see B)--> [G*G, d]
        --(optional frozen decoder-only LLM over [cells, 5 ring queries])--> readout:
        logits [C = G*G + 5] (grid row-major from the top left, then left/right/above/below/behind)
        and a convex-upsampling mask [9 r^2, G, G] that lifts the grid logits to image resolution.

Fusion (``fusion``): ``concat_mlp``: each A cell concatenated with B's mean token and their product,
through an MLP; ``cross_attention``: A's cells attend to B's cells (``nn.MultiheadAttention``),
which is how a cell can find "this part of B looks like me". The optional LLM is frozen
(``requires_grad`` off, eval mode, never in the optimizer: the loop trains only parameters with
``requires_grad``); trainable projections go in and out of its hidden size, with a residual
around it, as Spatial-MLLM's stage 1 (heatmaps generated with a frozen LLM).

Camera cues (``n_pose`` > 0, ``data.pair_pose``): B's pose in A's camera, embedded by an MLP and
added to A's cells and the ring queries before the fusion, and mapped by a second MLP straight to
a logit offset per cell: where B's content lands is mostly a function of that pose, which a
small MLP learns from a few thousand pairs, while the tokens refine it by appearance.

Convex upsampling (RAFT's ``upsample_flow``, BridgeVLA's ConvexUpSample) is written here because
neither ships as a library module: a few lines of ``F.unfold``. Edges are replicate-padded, so a
constant coarse map stays that constant (zero padding would pull border logits towards 0).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

N_RING = 5
#: the tiny random-init Qwen2 of the demo and the tests (``make_random_qwen2``)
RANDOM_QWEN2_ARCH = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "vocab_size": 64, "max_position_embeddings": 1024}


def convex_upsample(coarse: torch.Tensor, mask: torch.Tensor, r: int) -> torch.Tensor:
    """coarse [B, Cc, G, W] -> [B, Cc, G*r, W*r]: every fine pixel is a convex combination of the
    3 x 3 coarse neighbours of its cell, with weights softmax(mask) over those 9.

    mask [B, 9*r*r, G, W], channel ``k*r*r + dy*r + dx`` = neighbour k (row-major over the 3 x 3,
    centre k=4) for sub-pixel (dy, dx) of the cell.
    """
    b, c, h, w = coarse.shape
    m = torch.softmax(mask.view(b, 9, r * r, h * w), dim=1)
    nb = F.unfold(F.pad(coarse, (1, 1, 1, 1), mode="replicate"), kernel_size=3).view(b, c, 9, h * w)
    up = torch.einsum("bkjn,bckn->bcjn", m, nb)  # [B, Cc, r*r, h*w]; a contraction, no [.., 9, ..] product kept
    return up.view(b, c, r, r, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c, h * r, w * r)


def make_random_qwen2(seed: int = 0, arch: dict | None = None) -> nn.Module:
    """A tiny seeded random-init ``Qwen2Model`` (transformers), frozen: the same weights for the same
    (seed, arch), whatever the global RNG; built in memory, so inference re-creates it from the two."""
    from transformers import Qwen2Config, Qwen2Model

    cfg = Qwen2Config(**(arch or RANDOM_QWEN2_ARCH), attention_dropout=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        llm = Qwen2Model(cfg)
    return freeze(llm)


def load_frozen_llm(name_or_path: str) -> nn.Module:
    """``AutoModel.from_pretrained(name_or_path)`` (a hub id or a local folder), frozen."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity(max(verbosity, hf_logging.WARNING))  # its info lines would bury the epoch lines
    try:
        return freeze(AutoModel.from_pretrained(name_or_path))
    finally:
        hf_logging.set_verbosity(verbosity)


def freeze(llm: nn.Module) -> nn.Module:
    for p in llm.parameters():
        p.requires_grad_(False)
    return llm.eval()


def pool_tokens(x: torch.Tensor, grid: int) -> torch.Tensor:
    """[B, h, w, D] -> [B, G*G, D]: average-pooled onto the G x G target grid."""
    x = F.adaptive_avg_pool2d(x.float().permute(0, 3, 1, 2), grid)
    return x.flatten(2).transpose(1, 2)


class TokenEncoder(nn.Module):
    """One keyframe's VGGT tokens [B, Th, Tw, Dv] and DINOv3 patch tokens [B, Hp, Wp, Dd] -> [B, G*G, d]:
    each layer-normalised, projected to d, average-pooled onto the G x G target grid, summed, plus a
    learned position per cell.

    Computed in the cheaper, exactly equal order (``pool``, then ``forward``): a layer norm is a
    per-token normalisation followed by a per-channel affine map, and the affine map and the
    ``Linear`` both commute with averaging (the pooling weights sum to 1), so only the parameter-free
    normalisation must run per token, once per keyframe (``HeatmapsTask`` does it once per table);
    the learned part then runs on G*G cells instead of Th*Tw + Hp*Wp tokens."""

    def __init__(self, dv: int, dd: int, d: int, grid: int):
        super().__init__()
        self.grid = grid
        self.vggt = nn.Sequential(nn.LayerNorm(dv), nn.Linear(dv, d))
        self.dino = nn.Sequential(nn.LayerNorm(dd), nn.Linear(dd, d))
        self.pos = nn.Parameter(torch.randn(grid * grid, d) * 0.02)

    def normalised_pooled(self, x: torch.Tensor, which: str) -> torch.Tensor:
        """[B, h, w, D] -> [B, G*G, D]: per-token normalisation (no parameters), then pooled."""
        ln = getattr(self, which)[0]
        return pool_tokens(F.layer_norm(x.float(), ln.normalized_shape, eps=ln.eps), self.grid)

    def forward(self, vggt_n: torch.Tensor, dino_n: torch.Tensor) -> torch.Tensor:
        """``normalised_pooled`` tokens [B, G*G, Dv], [B, G*G, Dd] -> [B, G*G, d]."""
        def project(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
            return seq[1](x * seq[0].weight + seq[0].bias)

        return project(self.vggt, vggt_n) + project(self.dino, dino_n) + self.pos


class ConcatMLP(nn.Module):
    """Each A cell [d] with B's mean token and their product -> an MLP, residual: [B, N, d]."""

    def __init__(self, d: int, dropout: float):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3 * d, 2 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * d, d))
        self.norm = nn.LayerNorm(d)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        g = b.mean(1, keepdim=True).expand_as(a)
        return self.norm(a + self.mlp(torch.cat([a, g, a * g], -1)))


class CrossAttention(nn.Module):
    """A's cells (queries) attend to B's cells (keys, values), then a feed-forward block: [B, N, d].

    Dropout in the feed-forward block only, as DINOv2/ViT do (attention-probability dropout 0): on
    the CPU a dropout on the attention weights forces the unfused attention path and a random mask
    as large as the attention map, ~5% of a training step; demo val KL without it 0.240 / 0.239 (seeds
    0 / 1), with it 0.246 / 0.231."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * d, d))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = self.norm1(a + self.attn(a, b, b, need_weights=False)[0])
        return self.norm2(h + self.ff(h))


class HeatmapModel(nn.Module):
    """from_tokens(vggt_a, dino_a, vggt_b, dino_b, pose=None) -> {"logits" [B, G*G+5], "mask" [B, 9 r^2, G, G]}
    (= forward(pool(vggt_a, dino_a), pool(vggt_b, dino_b), pose)).

    vggt_* [B, Th, Tw, Dv], dino_* [B, Hp, Wp, Dd], pose [B, n_pose] (required when n_pose > 0); ``image_size`` (H, W) of A's image,
    r = ceil(max(H, W) / G), at most ``max_upsample`` (``heatmap`` resizes the G*r map to H x W bilinearly).
    ``heatmap(out)`` -> [B, H, W]: the in-view probability per pixel (sums to the in-view mass).
    """

    def __init__(self, dv: int, dd: int, grid: int, image_size: tuple[int, int], d: int = 64, fusion: str = "cross_attention",
                 heads: int = 4, dropout: float = 0.0, llm: nn.Module | None = None, n_pose: int = 0, max_upsample: int | None = None):
        super().__init__()
        self.grid, self.image_size = grid, (int(image_size[0]), int(image_size[1]))
        self.r = max(1, math.ceil(max(self.image_size) / grid))
        if max_upsample is not None:  # the mask and the upsampling loss grow with r^2: cap r, bilinear the rest
            self.r = min(self.r, int(max_upsample))
        self.encode = TokenEncoder(dv, dd, d, grid)
        self.fuse = ConcatMLP(d, dropout) if fusion == "concat_mlp" else CrossAttention(d, heads, dropout)
        self.ring_query = nn.Parameter(torch.randn(N_RING, d) * 0.02)
        self.ring_in = nn.Linear(d, d)  # B-to-A summary into the ring queries (they see nothing else without an LLM)
        self.llm = llm
        if llm is not None:
            hidden = int(llm.config.hidden_size)
            self.llm_in, self.llm_out = nn.Linear(d, hidden), nn.Linear(hidden, d)
        # parameter-free matching cues, which carry over to unseen tours better than learned
        # features of a few dozen keyframes: each A cell's best and mean cosine similarity to B's cells
        self.sim_cells, self.sim_ring = nn.Linear(4, d), nn.Linear(4, d)
        self.n_pose = n_pose
        if n_pose:
            self.pose_embed = nn.Sequential(nn.Linear(n_pose, d), nn.GELU(), nn.Linear(d, d))
            self.pose_logits = nn.Sequential(nn.Linear(n_pose, 2 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * d, 2 * d),
                                             nn.GELU(), nn.Linear(2 * d, grid * grid + N_RING))
            nn.init.zeros_(self.pose_logits[-1].weight)  # starts at the prior, as the readout
            nn.init.zeros_(self.pose_logits[-1].bias)
        self.readout = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1))
        #: per-cell prior logits; the trainer starts them at log(mean train target), i.e. at that baseline
        self.prior = nn.Parameter(torch.zeros(grid * grid + N_RING))
        nn.init.zeros_(self.readout[1].weight)  # so the untrained model predicts exactly the prior
        nn.init.zeros_(self.readout[1].bias)
        self.mask_head = nn.Sequential(nn.Conv2d(d, 2 * d, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * d, 9 * self.r * self.r, 1))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.llm is not None:
            self.llm.eval()  # frozen: eval mode whatever the loop asks
        return self

    def pool(self, vggt: torch.Tensor, dino: torch.Tensor) -> dict[str, torch.Tensor]:
        """A keyframe's tokens (vggt [B, Th, Tw, Dv], dino [B, Hp, Wp, Dd]) -> its parameter-free grid
        features: "vggt_n"/"dino_n" [B, G*G, D] (``TokenEncoder.normalised_pooled``) and "vggt_u"/"dino_u"
        [B, G*G, D] (raw tokens pooled to the grid, unit length: the matching cues' input). Depends on
        no trainable weight, so a trainer computes it once per keyframe (``forward_pooled``)."""
        enc = self.encode
        return {"vggt_n": enc.normalised_pooled(vggt, "vggt"), "dino_n": enc.normalised_pooled(dino, "dino"),
                "vggt_u": F.normalize(pool_tokens(vggt, self.grid), dim=-1), "dino_u": F.normalize(pool_tokens(dino, self.grid), dim=-1)}

    @staticmethod
    def similarity(ua: torch.Tensor, ub: torch.Tensor) -> torch.Tensor:
        """[B, G*G, 2]: per A cell, max and mean cosine similarity to B's cells (unit cells [B, G*G, D])."""
        s = ua @ ub.transpose(1, 2)  # [B, G*G, G*G]
        return torch.stack([s.amax(-1), s.mean(-1)], -1)

    def from_tokens(self, vggt_a, dino_a, vggt_b, dino_b, pose: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The model on the pair's cached tokens: ``self(pool(A), pool(B), pose)``."""
        return self(self.pool(vggt_a, dino_a), self.pool(vggt_b, dino_b), pose)

    def forward(self, fa: dict[str, torch.Tensor], fb: dict[str, torch.Tensor], pose: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """From the ``pool`` features of A and B (a trainer pools each keyframe once; DDP wraps this call)."""
        if self.n_pose and (pose is None or pose.shape[-1] != self.n_pose):
            raise ValueError(f"this model takes camera cues pose [B, {self.n_pose}], got {None if pose is None else tuple(pose.shape)}")
        a, b = self.encode(fa["vggt_n"], fa["dino_n"]), self.encode(fb["vggt_n"], fb["dino_n"])  # [B, G*G, d]
        cue = self.pose_embed(pose.float())[:, None] if self.n_pose else 0.0  # [B, 1, d]
        sim = torch.cat([self.similarity(fa["vggt_u"], fb["vggt_u"]), self.similarity(fa["dino_u"], fb["dino_u"])], -1)  # [B, G*G, 4]
        cells = self.fuse(a + cue, b) + self.sim_cells(sim)
        ring = (self.ring_query + self.ring_in(cells.mean(1, keepdim=True)) + self.sim_ring(sim.mean(1, keepdim=True))
                + cue)  # [B, 5, d]
        seq = torch.cat([cells, ring], 1)  # ring queries last: a causal LLM lets them see every cell
        if self.llm is not None:
            emb = self.llm_in(seq).to(next(self.llm.parameters()).dtype)
            seq = seq + self.llm_out(self.llm(inputs_embeds=emb, use_cache=False).last_hidden_state.float())
        logits = self.readout(seq).squeeze(-1).float() + self.prior  # [B, G*G + 5]
        if self.n_pose:
            logits = logits + self.pose_logits(pose.float()).float()
        g = self.grid
        fmap = seq[:, : g * g].transpose(1, 2).reshape(len(seq), -1, g, g)
        return {"logits": logits, "mask": self.upsampling_mask(fmap).float()}

    def upsampling_mask(self, fmap: torch.Tensor) -> torch.Tensor:
        """[B, d, G, G] -> [B, 9 r^2, G, G]: 0.25 * mask_head(fmap), RAFT's 0.25 keeping the initial
        weights near uniform. The 0.25 scales the last conv's weights rather than its output: the same
        function and gradients, without two passes over the largest tensor of the step."""
        conv3, relu, conv1 = self.mask_head
        return F.conv2d(relu(conv3(fmap)), 0.25 * conv1.weight, 0.25 * conv1.bias)

    def fine_logits(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, G*r, G*r]: the grid logits convex-upsampled."""
        g = self.grid
        coarse = out["logits"][:, : g * g].view(-1, 1, g, g)
        return convex_upsample(coarse, out["mask"], self.r)[:, 0]

    def pooled_fine(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, G*G + 5] log-probabilities: softmax over (every fine pixel, ring cells), the pixels'
        mass summed back per grid cell; what the upsampling loss compares with the target."""
        g, r = self.grid, self.r
        fine = self.fine_logits(out)  # [B, G r, G r]
        joint = torch.cat([fine.flatten(1), out["logits"][:, g * g:]], 1).log_softmax(-1)
        cells = joint[:, : g * g * r * r].view(-1, g, r, g, r).permute(0, 1, 3, 2, 4).reshape(-1, g * g, r * r)
        return torch.cat([cells.logsumexp(-1), joint[:, g * g * r * r:]], 1)

    def heatmap(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, H, W]: in-view probability per pixel of A's image (sums to the predicted in-view mass)."""
        g = self.grid
        fine = self.fine_logits(out)
        h, w = self.image_size
        if fine.shape[-2:] != (h, w):
            fine = F.interpolate(fine[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        inview = out["logits"].softmax(-1)[:, : g * g].sum(-1)  # [B]
        return fine.flatten(1).softmax(-1).view(-1, h, w) * inview[:, None, None]
