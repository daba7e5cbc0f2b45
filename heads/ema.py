"""An exponential moving average of a model's trained weights, for evaluation and export.

Hand-rolled (a dozen lines) rather than ``torch.optim.swa_utils.AveragedModel``: that one deep-copies
the whole module, frozen backbone included (an LLM in the SIM heads), and its state dict holds the
copy's every weight; this keeps only the ``trained_keys`` tensors, the ones that change.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from navcache.heads.checkpoint import trained_keys


class EMA:
    """``ema <- decay * ema + (1 - decay) * weights`` after every optimizer step, starting from the
    initial weights. Floating buffers (BatchNorm running stats) are averaged like parameters;
    integer ones (``num_batches_tracked``) are copied."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay!r}")
        self.decay = decay
        self.keys = sorted(trained_keys(model))
        state = model.state_dict()
        self.shadow = {k: state[k].detach().clone() for k in self.keys}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        state = model.state_dict()
        for k, avg in self.shadow.items():
            if avg.is_floating_point():
                avg.lerp_(state[k], 1.0 - self.decay)
            else:
                avg.copy_(state[k])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged tensors, on CPU, keyed like the model's state dict."""
        return {k: v.detach().cpu().clone() for k, v in self.shadow.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise RuntimeError(f"EMA state does not match the model: {sorted(set(state) ^ set(self.shadow))}")
        for k, v in state.items():
            self.shadow[k].copy_(v)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Inside the block ``model`` holds the averaged weights; the training weights come back after."""
        state = model.state_dict()
        saved = {k: state[k].detach().clone() for k in self.keys}
        with torch.no_grad():
            for k in self.keys:
                state[k].copy_(self.shadow[k])
        try:
            yield model
        finally:
            with torch.no_grad():
                for k in self.keys:
                    state[k].copy_(saved[k])
