"""Memory-aware batches on CPU with an injected CUDA out-of-memory error: ``batch_size: auto`` of
frame-features (the real tiny DINOv3 behind a wrapper that raises ``torch.cuda.OutOfMemoryError``
above a batch size) and VGGT's whole-episode pass (quarantine, or ``max_frames_on_oom``)."""
from __future__ import annotations

import os

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from navcache.cache_specs import open_cache
from navcache.cache_specs.layout import PARTS, read_json
from navcache.pipeline.config import config_from_dict, load_config
from navcache.pipeline.encoders.base import BatchSizer, memory_needed
from navcache.pipeline.encoders.hf_vision import HFVisionEncoder
from navcache.pipeline.executors.local import build_parts
from navcache.pipeline.plan import plan_split
from navcache.pipeline.runner import ExtractOptions, extract
from tests.helpers import make_navila, write_project
from tests.standins.vggt_standin import StandInVGGT, make_standin


def _cuda_oom(n: int, what: str = "frames") -> torch.cuda.OutOfMemoryError:
    # the format of torch's CUDA caching allocator message, which names the failed allocation
    return torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {0.5 * n:.2f} GiB. GPU 0 has a total "
                                       f"capacity of 4.00 GiB of which 0 bytes is free ({n} {what}).")


# ----------------------------------------------------------------------------- BatchSizer itself

def test_auto_batch_halves_until_it_fits_and_covers_every_row_once():
    seen: list[int] = []

    def fn(x):
        if len(x) > 5:
            raise _cuda_oom(len(x))
        seen.extend(x.tolist())
        return x * 2

    sizer = BatchSizer("auto", max_size=32)
    out = sizer.run("k", torch.arange(50), fn)
    assert torch.cat(out).tolist() == [2 * i for i in range(50)]
    assert seen == list(range(50))  # each row in exactly one successful call, in order
    assert [s for _, s in sizer.failed] == [32, 16, 8] and sizer.known() == {"k": 4}
    sizer.run("k", torch.arange(9), fn)  # remembered: no new failure for the same key
    assert len(sizer.failed) == 3
    sizer.run("other", torch.arange(3), fn)  # another key starts from max_size (3 rows fit)
    assert len(sizer.failed) == 3 and sizer.current("other") == 32


def test_fixed_batch_and_a_single_row_that_does_not_fit_let_the_error_through():
    def never(x):
        raise _cuda_oom(len(x))

    with pytest.raises(torch.cuda.OutOfMemoryError):
        BatchSizer(4).run("k", torch.arange(8), never)
    sizer = BatchSizer("auto", max_size=8)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        sizer.run("k", torch.arange(8), never)
    assert [s for _, s in sizer.failed] == [8, 4, 2]
    assert memory_needed(_cuda_oom(3)) == "1.50 GiB" and memory_needed(RuntimeError("boom")) is None
    with pytest.raises(ValueError, match="auto"):
        BatchSizer(0)


# ------------------------------------------------------------------ frame-features, batch_size auto

class _OOMAbove(nn.Module):
    """The real model, except that a batch above ``limit`` frames raises CUDA's OOM error."""

    def __init__(self, model: nn.Module, limit: int):
        super().__init__()
        self.model, self.limit, self.config = model, limit, model.config
        self.sizes: list[int] = []

    def forward(self, pixel_values):
        self.sizes.append(len(pixel_values))
        if len(pixel_values) > self.limit:
            raise _cuda_oom(len(pixel_values))
        return self.model(pixel_values=pixel_values)


class OOMEncoder(HFVisionEncoder):
    """The tiny DINOv3 behind ``_OOMAbove``: the FrozenEncoder contract, only ``_load_model`` differs."""

    limit = 5

    def _load_model(self):
        return _OOMAbove(super()._load_model(), self.limit)


def _part_checksums(cache: Path) -> dict:
    out = {}
    for p in sorted((cache / PARTS).iterdir()):
        meta = read_json(p / "part.json")
        out[p.name] = ({k: v["sha256"] for k, v in meta["arrays"].items()},
                       [(e["episode_id"], e["status"], e.get("length")) for e in meta["episodes"]])
    return out


@pytest.fixture(scope="module")
def navila(tmp_path_factory):
    return make_navila(tmp_path_factory.mktemp("nav") / "data", n_episodes=6)


def _oom_build(tmp_path: Path, navila: Path, tiny_model: Path, limit: int):
    # every row goes to the encoder (no frame dedup): the batch sizes asserted below are the rows'
    cfg = load_config(write_project(tmp_path, navila, tiny_model, part_size=4, batch_size="auto", max_batch_size=32, dedup_frames=False))
    (sp,) = plan_split(cfg, "nav", "train", only="frame-features")
    OOMEncoder.limit = limit
    sp.stage.encoder = OOMEncoder(sp.stage.encoder.s)
    metas = build_parts(sp, sp.todo, cfg.backend, cfg.chunk_rows, cfg.run)
    return sp, metas


def test_auto_batch_gives_the_features_of_a_fixed_small_batch(tmp_path, navila, tiny_model):
    ref = tmp_path / "fixed"
    ref.mkdir()
    s = extract(load_config(write_project(ref, navila, tiny_model, part_size=4, batch_size=4, dedup_frames=False)), ExtractOptions("train"))
    assert not s.errors
    auto = tmp_path / "auto"
    auto.mkdir()
    sp, metas = _oom_build(auto, navila, tiny_model, limit=5)
    sizer, model = sp.stage.batches, sp.stage.encoder.load()
    # the run's first batch is one episode (8 frames: executors.local ramps batches up), which fails;
    # 4 is found once and remembered: the later 32-frame batches run as 4-frame chunks, never failing
    assert list(sizer.known().values()) == [4] and [n for _, n in sizer.failed] == [8]
    assert max(n for n in model.sizes if n <= 5) == 4 and sorted(n for n in model.sizes if n > 5) == [8]
    got, want = _part_checksums(auto / "cache/nav/train/frame_features"), _part_checksums(ref / "cache/nav/train/frame_features")
    assert got == want  # byte-identical arrays, same episodes in the same parts: none lost or duplicated
    ids = [e for _, eps in got.values() for e, status, _ in eps]
    assert len(ids) == len(set(ids)) == 12 and all(st == "ok" for _, eps in got.values() for _, st, _ in eps)


def test_auto_batch_quarantines_episodes_when_not_even_one_frame_fits(tmp_path, navila, tiny_model):
    sp, metas = _oom_build(tmp_path, navila, tiny_model, limit=0)
    eps = [e for m in metas for e in m["episodes"]]
    assert len(eps) == 12 and all(e["status"] != "ok" and "out of memory" in e["reason"] for e in eps)


# --------------------------------------------------------------------------- VGGT's whole episode

class CudaOOMVGGT(StandInVGGT):
    """The VGGT stand-in whose aggregator raises CUDA's OOM message (0.5 GiB a frame) above
    ``$NAVCACHE_TEST_VGGT_FIT`` frames (default 4). An environment variable, not a class attribute:
    the loader imports this module by its dotted name, which need not be the module object pytest
    imported (pytest names it after the checkout's folder when the repository root is a package)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        inner = self.aggregator.forward

        def forward(images):
            if images.shape[1] > int(os.environ.get("NAVCACHE_TEST_VGGT_FIT", "4")):
                raise _cuda_oom(images.shape[1])
            return inner(images)

        self.aggregator.forward = forward


def _videos(root: Path, lengths: dict[str, int]) -> Path:
    split = root / "train"
    split.mkdir(parents=True, exist_ok=True)
    for name, n in lengths.items():
        w = cv2.VideoWriter(str(split / f"{name}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (32, 32))
        for i in range(n):
            w.write(np.full((32, 32, 3), (20 * i) % 255, np.uint8))
        w.release()
    return root


def _vggt_run(tmp_path: Path, **geometry):
    data = _videos(tmp_path / "data", {"long_a": 12, "long_b": 9, "short": 3})
    model = make_standin(tmp_path / "vggt")
    cfg = {"cache_root": str(tmp_path / "cache"),
           "datasets": {"d": {"source": "videos", "root": str(data), "splits": ["train"], "stages": ["geometry"],
                              "options": {"num_frames": 8}}},
           "stages": {"geometry": {"provider": "vggt", "image_size": [518, 518], "stride": 14, **geometry,
                                   "vggt": {"model": str(model), "allow_custom_code": True,
                                            "model_class": "tests.pipeline.test_oom_batching:CudaOOMVGGT"}}}}
    project = config_from_dict(cfg, tmp_path)
    return project, extract(project, ExtractOptions("train"))


def _entries(cache: Path) -> dict[str, dict]:
    return {e["episode_id"]: e for p in sorted((cache / PARTS).iterdir()) for e in read_json(p / "part.json")["episodes"]}


def test_vggt_out_of_memory_quarantines_naming_n_m_and_the_memory(tmp_path):
    project, s = _vggt_run(tmp_path)
    geo = s.stages[0]
    assert not s.errors and geo.finalized and geo.episodes_ok == 1 and geo.episodes_quarantined == 2
    why = {q["episode_id"]: q["reason"] for q in geo.quarantined}
    for ep in ("long_a", "long_b"):
        assert "N_m=8" in why[ep] and "allocation of 4.00 GiB failed" in why[ep] and "max_frames_on_oom" in why[ep]
    assert open_cache(project.cache_root, "d", "train", "geometry").episodes == ["short"]  # the run went on


def test_vggt_reruns_on_fewer_frames_and_records_it(tmp_path):
    project, s = _vggt_run(tmp_path, max_frames_on_oom=6)  # 6 frames do not fit either; 3 do
    geo = s.stages[0]
    assert not s.errors and geo.episodes_ok == 3 and geo.episodes_quarantined == 0
    g = open_cache(project.cache_root, "d", "train", "geometry")
    entries = _entries(Path(project.cache_root) / "d/train/geometry")
    for ep, n in (("long_a", 12), ("long_b", 9)):
        sampled = np.linspace(0, n - 1, 8).astype(int)
        kept = sampled[np.unique(np.linspace(0, 7, 3).round().astype(int))]
        np.testing.assert_array_equal(g[ep]["frame_index"], kept)  # first, middle and last of the 8
        assert entries[ep]["meta"] == {"frames_on_oom": {"n_m": 8, "kept": 3, "max_frames_on_oom": 6}}
    assert len(g["short"]["frame_index"]) == 3 and "meta" not in entries["short"]
    assert "6 evenly spaced" in g.manifest["provenance"]["geometry"]["on_oom"]
    assert g.manifest["identity"]["max_frames_on_oom"] == 6  # another cache than one that quarantines


def test_vggt_rerun_that_never_fits_is_quarantined_with_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("NAVCACHE_TEST_VGGT_FIT", "0")
    _, s = _vggt_run(tmp_path, max_frames_on_oom=6)
    why = {q["episode_id"]: q["reason"] for q in s.stages[0].quarantined}
    assert "N_m=8" in why["long_a"] and "rerun on 6, 3, 1 frames" in why["long_a"]
    assert "N_m=3" in why["short"] and "rerun on 2, 1 frames" in why["short"]
