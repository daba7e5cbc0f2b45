"""The shared encoder base: a new encoder written against it, and the two encoders that use it."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from navcache.pipeline.encoders.base import FrozenEncoder, check_device, check_precision, resolve_precision
from navcache.pipeline.encoders.hf_vision import EncoderSettings, HFVisionEncoder
from navcache.pipeline.encoders.vggt import VGGTAdapter, VGGTSettings
from navcache.pipeline.encoders.weights import PROVENANCE_FILE, weights_fingerprint
from navcache.pipeline.errors import NavcacheError
from tests.standins.vggt_standin import make_standin

STANDIN = "tests.standins.vggt_standin:StandInVGGT"


# -- a minimal encoder written the way the base's docstring says ----------------------------------


@dataclass(frozen=True)
class LinearSettings:
    model: str
    device: str = "cpu"
    precision: str = "auto"
    #: output width kept (an output option: it enters the identity)
    keep: int = 3

    def __post_init__(self):
        check_device(self.device)
        check_precision(self.precision)


class LinearEncoder(FrozenEncoder):
    """[N, 4] -> [N, keep]: one linear layer read from ``model.safetensors``."""

    def __init__(self, s):
        super().__init__(s)
        self.loads = 0

    def _load_model(self):
        self.loads += 1
        path = Path(self.s.model) / "model.safetensors"
        if not path.exists():
            raise NavcacheError(f"no weights in {self.s.model}")
        layer = torch.nn.Linear(4, 4)
        layer.load_state_dict(load_file(path))
        return layer

    def output_identity(self) -> dict:
        return {"keep": self.s.keep}

    def encode(self, x):
        model = self.load()
        with torch.inference_mode(), self.autocast():
            y = model(x.to(self.resolved_device()))
        return y[:, : self.s.keep].float().cpu()


def save_linear(folder: Path, seed: int, random_init: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    save_file(torch.nn.Linear(4, 4).state_dict(), folder / "model.safetensors")
    if random_init:
        (folder / PROVENANCE_FILE).write_text(json.dumps({"random_init": True, "seed": seed}))
    return folder


def test_new_encoder_loads_once_frozen_in_eval_even_from_many_threads(tmp_path):
    enc = LinearEncoder(LinearSettings(model=str(save_linear(tmp_path / "m", 0))))
    got = []
    threads = [threading.Thread(target=lambda: got.append(enc.load())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert enc.loads == 1 and all(m is got[0] for m in got)
    assert not got[0].training and not any(p.requires_grad for p in got[0].parameters())
    assert next(got[0].parameters()).device.type == "cpu"


def test_new_encoder_autocast_follows_precision_on_cpu(tmp_path):
    d = save_linear(tmp_path / "m", 0)
    x = torch.randn(5, 4)
    fp32 = LinearEncoder(LinearSettings(model=str(d)))
    assert fp32.resolved_precision() == "fp32" and fp32.autocast_dtype() is None
    with fp32.autocast():
        assert not torch.is_autocast_enabled("cpu")
    bf16 = LinearEncoder(LinearSettings(model=str(d), precision="bf16"))
    with bf16.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    ref = fp32.encode(x)
    low = bf16.encode(x)
    assert ref.shape == low.shape == (5, 3)
    # bf16 keeps ~3 significant digits: close to fp32, but not bit-identical
    torch.testing.assert_close(low, ref, rtol=0.05, atol=0.05)
    assert not torch.equal(low, ref)


def test_identity_tracks_weight_content_and_output_options_not_speed(tmp_path):
    d = save_linear(tmp_path / "m", 0)
    ident = LinearEncoder(LinearSettings(model=str(d))).identity()
    assert ident == {"model": str(d), "weights": weights_fingerprint(str(d)), "precision": "fp32", "keep": 3}
    assert LinearEncoder(LinearSettings(model=str(d), keep=2)).identity() != ident
    assert LinearEncoder(LinearSettings(model=str(d), precision="bf16")).identity()["precision"] == "bf16"
    save_linear(d, 1)  # same folder, other weights
    assert LinearEncoder(LinearSettings(model=str(d))).identity()["weights"] != ident["weights"]


def test_provenance_labels_random_init_honestly(tmp_path):
    rnd = LinearEncoder(LinearSettings(model=str(save_linear(tmp_path / "r", 0))))
    real = LinearEncoder(LinearSettings(model=str(save_linear(tmp_path / "p", 0, random_init=False))))
    assert rnd.random_init and rnd.provenance() == {"id": str(tmp_path / "r"), "architecture": "LinearEncoder", "random_init": True, "seed": 0}
    assert not real.random_init and real.provenance()["random_init"] is False


def test_load_errors_are_the_encoders_own(tmp_path):
    enc = LinearEncoder(LinearSettings(model=str(tmp_path / "nothing")))
    with pytest.raises(NavcacheError, match="no weights"):
        enc.load()
    assert enc._model is None  # a failed load leaves nothing half-published


@pytest.mark.parametrize("check,bad,field", [(check_device, "gpu", "device"), (check_device, 0, "device"),
                                             (check_precision, "float16", "precision"), (check_precision, None, "precision")])
def test_setting_checks_name_the_field(check, bad, field):
    with pytest.raises(ValueError, match=f"^{field} must be"):
        check(bad)


def test_settings_of_both_encoders_use_the_same_checks():
    with pytest.raises(ValueError, match="device must be"):
        EncoderSettings(device="gpu")
    with pytest.raises(ValueError, match="precision must be"):
        EncoderSettings(precision="half")
    with pytest.raises(ValueError, match="dtype must be"):
        VGGTSettings(dtype="half")


def test_auto_precision_on_cpu_is_fp32_and_explicit_wins():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp16", "cpu") == "fp16"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_precision_on_cuda_follows_the_compute_capability():
    major = torch.cuda.get_device_capability(0)[0]
    assert resolve_precision("auto", "cuda") == ("bf16" if major >= 8 else "fp16")
    assert resolve_precision("auto", "cuda:0") == resolve_precision("auto", "cuda")


# -- the two encoders on the base -------------------------------------------------------------------


def test_hf_vision_identity_and_provenance_keep_their_keys(tiny_model):
    enc = HFVisionEncoder(EncoderSettings(model=str(tiny_model), device="cpu"))
    ident = enc.identity()
    # these keys (and values) are what existing caches were fingerprinted with
    assert set(ident) == {"model", "revision", "class", "weights", "processor", "precision"}
    assert ident["class"] == "DINOv3ViTConfig" and ident["precision"] == "fp32" and ident["revision"] is None
    assert ident["weights"] == weights_fingerprint(str(tiny_model))
    proc = json.loads((tiny_model / "preprocessor_config.json").read_text())
    assert ident["processor"] == {k: v for k, v in proc.items() if k != "image_processor_type"}
    prov = enc.provenance()
    assert prov["random_init"] is True and prov["architecture"] == "DINOv3ViTConfig" and prov["revision"] is None


def test_hf_vision_encodes_under_the_base_autocast(tiny_model):
    x = torch.rand(2, 3, 64, 64)
    fp32 = HFVisionEncoder(EncoderSettings(model=str(tiny_model), device="cpu"))
    bf16 = HFVisionEncoder(EncoderSettings(model=str(tiny_model), device="cpu", precision="bf16"))
    (c32, p32), (c16, p16) = fp32.encode(x), bf16.encode(x)
    assert c32.dtype == c16.dtype == torch.float32 and p32.shape == p16.shape == (2, 4, 4, 48)
    torch.testing.assert_close(c16, c32, rtol=0.1, atol=0.1)
    assert not torch.equal(c16, c32)  # bf16 autocast really ran


def test_vggt_identity_keeps_its_keys(tmp_path):
    d = make_standin(tmp_path / "v", seed=0)
    ident = VGGTAdapter(VGGTSettings(model=str(d), model_class=STANDIN, device="cpu")).identity()
    assert set(ident) == {"model", "class", "weights", "preprocess", "dtype", "keep_tokens"}
    tok = VGGTAdapter(VGGTSettings(model=str(d), model_class=STANDIN, device="cpu", keep_tokens=True)).identity()
    assert set(tok) == set(ident) | {"token_pool"}
