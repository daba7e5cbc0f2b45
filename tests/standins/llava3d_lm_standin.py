"""A stand-in LLaVA-3D backend for the worker protocol (``pipeline/encoders/llava3d_worker.py``),
built on navcache's own transformers: a tiny seeded random-init ``LlamaForCausalLM``, the CLIP
tower named by its config's ``mm_vision_tower`` (layer -2, CLS dropped, as LLaVA), LLaVA-3D's
3-D patch path in miniature (unprojection at integer pixels, nearest to the patch grid, a learned
3-D position MLP added to the patches, 0.2 m voxel mean pooling) and an ``mlp2x_gelu`` projector,
spliced into the prompt ``USER: <image>\\n{text} ASSISTANT:`` at ``<image>``.

It runs in the worker process (``backend: tests.standins.llava3d_lm_standin:StandInLLaVA3D``,
``lm_source``: the repository root). ``make_standin`` writes its folder: config.json,
model.safetensors, the 3-D modules in ``standin_3d.safetensors``, a byte-level tokenizer and
``navcache_provenance.json`` (random_init). Test hooks in config.json: ``standin_crash_at_frame``
n with ``standin_crash_flag`` (a path): the worker exits abruptly at its n-th frame unless the
flag file exists (it creates it first, so exactly one crash happens); ``standin_sleep_at_frame`` n:
the worker stops answering at its n-th frame (sleeps an hour).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

VOXEL = 0.2


def _modules(clip_hidden: int, hidden: int) -> nn.ModuleDict:
    return nn.ModuleDict({
        "pos": nn.Sequential(nn.Linear(3, clip_hidden), nn.LayerNorm(clip_hidden), nn.ReLU(), nn.Linear(clip_hidden, clip_hidden)),
        "projector": nn.Sequential(nn.Linear(clip_hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden)),
    })


def _tokenizer():
    """Byte-level BPE without merges (every byte a token) with Llama's <s> prefix: no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    for special in ("<unk>", "<s>", "</s>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def make_standin(out: Path, clip: Path, seed: int = 0, hidden: int = 32, layers: int = 2, **hooks) -> Path:
    """Write a stand-in checkpoint folder whose vision tower is the CLIP folder ``clip``."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    tok = _tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).eval().save_pretrained(out)
    clip_hidden = CLIPVisionConfig.from_pretrained(clip).hidden_size
    save_file({k: v.contiguous() for k, v in _modules(clip_hidden, hidden).state_dict().items()}, str(out / "standin_3d.safetensors"))
    tok.save_pretrained(out)
    conf = json.loads((out / "config.json").read_text())
    conf.update(mm_vision_tower=str(clip), mm_hidden_size=clip_hidden, mm_vision_select_layer=-2, mm_projector_type="mlp2x_gelu", **hooks)
    (out / "config.json").write_text(json.dumps(conf, indent=1))
    (out / "navcache_provenance.json").write_text(json.dumps({"random_init": True, "seed": seed, "note": "LLaVA-3D stand-in for tests"}))
    return out


class StandInLLaVA3D:
    """The worker's backend contract: ``(model, device, dtype)``, ``info()``, ``hidden_states(...)``."""

    def __init__(self, model: str, device: str, dtype: str):
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionModel, LlamaForCausalLM

        self.conf = json.loads((Path(model) / "config.json").read_text())
        self.device = device
        self.lm = LlamaForCausalLM.from_pretrained(model).eval().to(device)
        self.tok = AutoTokenizer.from_pretrained(model)
        tower = self.conf["mm_vision_tower"]
        self.clip = CLIPVisionModel.from_pretrained(tower).eval().to(device)
        self.proc = CLIPImageProcessor.from_pretrained(tower)
        self.mods = _modules(self.conf["mm_hidden_size"], self.conf["hidden_size"])
        self.mods.load_state_dict(load_file(str(Path(model) / "standin_3d.safetensors")))
        self.mods.eval().to(device)
        self.frames = 0

    def info(self) -> dict:
        import transformers

        return {"class": "StandInLLaVA3D", "hidden_size": int(self.conf["hidden_size"]), "crop_size": int(self.proc.crop_size["height"]),
                "vision_tower": self.conf["mm_vision_tower"], "transformers": transformers.__version__, "torch": torch.__version__}

    def _crash_hook(self) -> None:
        self.frames += 1
        flag = self.conf.get("standin_crash_flag")
        if self.frames == self.conf.get("standin_crash_at_frame") and flag and not os.path.exists(flag):
            Path(flag).touch()
            os._exit(17)
        if self.frames == self.conf.get("standin_sleep_at_frame"):
            time.sleep(3600)

    @torch.inference_mode()
    def hidden_states(self, images, depth, pose, intrinsics, text):
        """images: V uint8 [H, W, 3]; depth float32 [V, S, S]; pose, intrinsics [V, 4, 4] ->
        (float32 [L, D], N voxel tokens)."""
        self._crash_hook()
        px = self.proc(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        feats = self.clip(pixel_values=px, output_hidden_states=True).hidden_states[-2][:, 1:]  # [V, P*P, C]
        p = int(round(feats.shape[1] ** 0.5))
        xyz = _patch_xyz(torch.as_tensor(depth), torch.as_tensor(intrinsics), torch.as_tensor(pose), p).to(self.device)  # [V, P*P, 3]
        feats = (feats + self.mods["pos"](xyz)).reshape(-1, feats.shape[-1])
        _, voxel = torch.unique(torch.round(xyz.reshape(-1, 3) / VOXEL).long(), dim=0, return_inverse=True)
        pooled = torch.zeros(int(voxel.max()) + 1, feats.shape[-1], device=self.device).index_add_(0, voxel, feats)
        pooled = pooled / torch.bincount(voxel).unsqueeze(1)
        tokens = self.mods["projector"](pooled)  # [N, D]
        before, after = f"USER: <image>\n{text} ASSISTANT:".split("<image>")
        ids_a = self.tok(before, return_tensors="pt").input_ids[0]
        ids_b = self.tok(after, add_special_tokens=False, return_tensors="pt").input_ids[0]
        emb = self.lm.get_input_embeddings()
        seq = torch.cat([emb(ids_a.to(self.device)), tokens, emb(ids_b.to(self.device))])[None]
        h = self.lm.model(inputs_embeds=seq, output_hidden_states=True).hidden_states[-1][0]
        return h.float().cpu().numpy(), int(tokens.shape[0])


def _patch_xyz(depth: torch.Tensor, k: torch.Tensor, pose: torch.Tensor, p: int) -> torch.Tensor:
    """World xyz at integer pixels of [V, S, S] depth, nearest-sampled to a P x P grid -> [V, P*P, 3]."""
    v, s, _ = depth.shape
    idx = torch.div(torch.arange(p) * s, p, rounding_mode="floor")
    z = depth[:, idx][:, :, idx].double()
    yy, xx = torch.meshgrid(idx.double(), idx.double(), indexing="ij")
    k, pose = k.double(), pose.double()
    x = (xx - k[:, 0, 2, None, None]) * z / k[:, 0, 0, None, None]
    y = (yy - k[:, 1, 2, None, None]) * z / k[:, 1, 1, None, None]
    cam = torch.stack([x, y, z, torch.ones_like(z)], -1).reshape(v, -1, 4)
    return (cam @ pose.transpose(1, 2))[..., :3].float()


def reference_hidden_states(model: Path, images, depth, pose, intrinsics, text) -> np.ndarray:
    """The stand-in run in this process (no worker): what the cache must hold before the budget."""
    return StandInLLaVA3D(str(model), "cpu", "fp32").hidden_states(images, depth, pose, intrinsics, text)[0]
