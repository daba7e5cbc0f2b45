"""LLaVA-3D language-model worker: a script run by ANOTHER interpreter (``lm_python``: a venv with
LLaVA-3D's dependencies, which pin transformers 4.37.2), so that navcache's own transformers is
never pinned to it. It imports only the standard library, numpy and what its backend needs; never
navcache (the worker's venv does not have it). Started by ``llava3d_lm.LMWorker``.

    lm_python llava3d_worker.py --backend B --source DIR --model M --device D --dtype T --workdir W

Protocol (version 1): JSON lines, no pickle. stdout carries protocol lines only (the worker points
fd 1 at stderr before importing anything, so library prints cannot corrupt it); stderr is a log.

    worker -> {"op": "hello", "protocol": 1, "info": {...}}     after the weights loaded; info has
              at least "class", "hidden_size" (D) and "crop_size" (S, the square CLIP crop)
    worker -> {"op": "error", "id": null, "error": "..."}      loading failed; the worker exits 2
    parent -> {"op": "encode", "id": n, "dir": "...", "views": V, "frames": T, "text": "..."}
              with, in ``dir``, .npy files (``allow_pickle=False``): image{v}.npy uint8 [T, H, W, 3]
              per view v, depth.npy float32 [T, V, S, S] (metres, already LLaVA-3D's resize +
              centre crop to S), pose.npy float32 [T, V, 4, 4] (camera-to-world), intrinsics.npy
              float32 [T, V, 4, 4] (of the S x S crop, LLaVA-3D's 4x4 form)
    worker -> {"op": "result", "id": n, "lengths": [L_t], "visual_tokens": [N_t], "file": "hidden.npy"}
              hidden.npy float32 [sum L_t, D]: each frame's last-layer hidden states, one after
              the other (frame t: L_t positions, N_t of them 3-D patch tokens)
    worker -> {"op": "error", "id": n, "error": "..."}         this request failed; the worker goes on
    parent -> {"op": "exit"}                                   ends the worker; stdin closing
              without it (the parent was killed) ends it too, removing ``--workdir``

Backends: ``llava3d`` (below: LLaVA-3D's published loader and forward) or "module:name" importable
once ``--source`` is on sys.path (tests: a stand-in on navcache's own transformers). A backend is
built as ``Backend(model, device, dtype)`` and has ``info() -> dict`` and
``hidden_states(images, depth, pose, intrinsics, text) -> (float32 [L, D], N)`` for one frame
(images: V arrays uint8 [H, W, 3]; depth [V, S, S]; pose, intrinsics [V, 4, 4]).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback

PROTOCOL = 1
#: RGBDVideoProcessor opens this EmbodiedScan scene table (relative to the cwd) when the model is
#: built, for its file-based loaders, which the worker does not use: an empty table stands in
SCENE_TABLE = os.path.join("playground", "data", "annotations", "embodiedscan_infos_full.json")


class LLaVA3DBackend:
    """LLaVA-3D through its own code (``--source`` = a checkout of ZCMax/LLaVA-3D):
    ``llava.model.builder.load_pretrained_model`` (tokenizer with LLaVA's added tokens, the
    model in ``dtype``, the CLIP tower of ``mm_vision_tower`` and the RGB-D video tower), the
    ``conv_mode`` conversation template with ``<image>`` before the text, and one forward pass
    of ``LlavaLlamaForCausalLM`` with ``images`` [1, V, 3, S, S], ``depths`` [1, V, S, S],
    ``poses`` / ``intrinsics`` [1, V, 4, 4] (its 3-D patch path: unprojection, learned 3-D
    position embedding, 0.2 m voxel pooling) and ``output_hidden_states=True``."""

    def __init__(self, model: str, device: str, dtype: str, conv_mode: str = "llava_v1"):
        import torch

        # imported explicitly: llava.model's __init__ swallows the errors of its own imports
        import llava.model.language_model.llava_llama  # noqa: F401
        from llava.mm_utils import get_model_name_from_path
        from llava.model.builder import load_pretrained_model

        if not os.path.exists(SCENE_TABLE):
            os.makedirs(os.path.dirname(SCENE_TABLE), exist_ok=True)
            with open(SCENE_TABLE, "w") as f:
                f.write("{}")
        name = get_model_name_from_path(model)
        if "llava" not in name.lower():
            raise ValueError(f"LLaVA-3D's loader only builds the multimodal model when the folder name contains 'llava' (got {name!r})")
        self.torch, self.conv_mode, self.device = torch, conv_mode, device
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        self.tokenizer, self.model, self.processor, _ = load_pretrained_model(
            model, None, name, torch_dtype=self.dtype, device_map={"": device}, device=device)
        self.model.eval()

    def info(self) -> dict:
        import transformers

        proc = self.model.get_vision_tower().image_processor
        cfg = self.model.config
        return {"class": type(self.model).__name__, "hidden_size": int(cfg.hidden_size), "crop_size": int(proc.crop_size["height"]),
                "vision_tower": str(cfg.mm_vision_tower), "video_tower": str(getattr(cfg, "mm_video_tower", None)),
                "transformers": transformers.__version__, "torch": self.torch.__version__}

    def _input_ids(self, text: str):
        from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN
        from llava.conversation import conv_templates
        from llava.mm_utils import tokenizer_special_token

        image = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN if getattr(self.model.config, "mm_use_im_start_end", False) else DEFAULT_IMAGE_TOKEN
        conv = conv_templates[self.conv_mode].copy()
        conv.append_message(conv.roles[0], image + "\n" + text)
        conv.append_message(conv.roles[1], None)
        return tokenizer_special_token(conv.get_prompt(), self.tokenizer, return_tensors="pt")[None]

    def hidden_states(self, images, depth, pose, intrinsics, text):
        torch = self.torch
        px = self.model.get_vision_tower().image_processor.preprocess(images=list(images), return_tensors="pt")["pixel_values"]
        ids = self._input_ids(text).to(self.device)
        as_t = lambda a: torch.as_tensor(a)[None].to(self.device, self.dtype)  # noqa: E731
        torch.manual_seed(0)  # LLaVA-3D keeps a random 2560 of more voxels (torch.randperm): the same ones every run
        with torch.inference_mode():
            out = self.model(input_ids=ids, images=as_t(px), depths=as_t(depth), poses=as_t(pose), intrinsics=as_t(intrinsics),
                             output_hidden_states=True, return_dict=True, use_cache=False)
        h = out.hidden_states[-1][0].float().cpu().numpy()
        return h, int(h.shape[0] - (ids.shape[1] - 1))  # the one <image> position became the 3-D patch tokens


def make_backend(name: str, model: str, device: str, dtype: str, conv_mode: str):
    if name == "llava3d":
        return LLaVA3DBackend(model, device, dtype, conv_mode)
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)(model, device, dtype)


def encode(backend, msg: dict) -> dict:
    """One request: every frame through the backend, the hidden states saved next to the inputs."""
    import numpy as np

    d, views, frames = msg["dir"], int(msg["views"]), int(msg["frames"])
    load = lambda n: np.load(os.path.join(d, n), allow_pickle=False)  # noqa: E731
    images = [load(f"image{v}.npy") for v in range(views)]
    depth, pose, intrinsics = load("depth.npy"), load("pose.npy"), load("intrinsics.npy")
    hidden, lengths, visual = [], [], []
    for t in range(frames):
        h, n = backend.hidden_states([im[t] for im in images], depth[t], pose[t], intrinsics[t], msg["text"])
        hidden.append(np.asarray(h, np.float32))
        lengths.append(int(h.shape[0]))
        visual.append(int(n))
    np.save(os.path.join(d, "hidden.npy"), np.concatenate(hidden), allow_pickle=False)
    return {"op": "result", "id": msg["id"], "lengths": lengths, "visual_tokens": visual, "file": "hidden.npy"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--backend", "--model", "--device", "--dtype", "--workdir"):
        ap.add_argument(name, required=True)
    ap.add_argument("--source", default="")
    ap.add_argument("--conv-mode", default="llava_v1")
    args = ap.parse_args(argv)
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # prints of any library (and C code) go to the log, never into the protocol
    sys.stdout = sys.stderr

    def send(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    if args.source:
        sys.path.insert(0, os.path.abspath(args.source))
    os.chdir(args.workdir)
    try:
        backend = make_backend(args.backend, args.model, args.device, args.dtype, args.conv_mode)
        send({"op": "hello", "protocol": PROTOCOL, "info": backend.info()})
    except BaseException as e:  # noqa: BLE001 - whatever stops loading is reported, then the worker ends
        traceback.print_exc()
        send({"op": "error", "id": None, "error": f"{type(e).__name__}: {e}"})
        return 2
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("op") == "exit":
            return 0
        try:
            if msg.get("op") != "encode":
                raise ValueError(f"unknown op {msg.get('op')!r} (valid: encode, exit)")
            send(encode(backend, msg))
        except Exception as e:  # noqa: BLE001 - one bad request must not end the worker
            traceback.print_exc()
            send({"op": "error", "id": msg.get("id"), "error": f"{type(e).__name__}: {e}"})
    # stdin closed without "exit": the parent is gone (killed), so nobody will remove the folder
    import shutil

    os.chdir(os.path.dirname(args.workdir.rstrip(os.sep)) or os.sep)
    shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
