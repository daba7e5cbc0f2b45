"""Inputs stay under their dataset root unless the project file says otherwise, names cannot leave
the cache root, only allowed code is imported, and one record that cannot be stored never sinks
its split. Every damaged file is generated here, in tmp_path."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from navcache.pipeline.config import config_from_dict
from navcache.pipeline.encoders.vggt import VGGTAdapter, VGGTSettings
from navcache.pipeline.errors import ConfigError, DatasetError
from navcache.pipeline.runner import ExtractOptions, extract
from navcache.pipeline.sources import make_source
from navcache.pipeline.sources.navila import NavilaSource
from tests.helpers import make_navila

REFUSAL = "outside the dataset root"


def _project(tmp: Path, datasets: dict[str, dict]) -> object:
    return config_from_dict({"cache_root": str(tmp / "cache"), "datasets": datasets}, tmp)


def _navila(root: Path, **options) -> dict:
    return {"source": "navila", "root": str(root), "splits": ["train"], "stages": ["poses"], "part_size": 4,
            "options": options}


def _stage(summary, dataset: str):
    (s,) = [s for s in summary.stages if s.dataset == dataset]
    return s


# -- symlinks and option paths out of the root --------------------------------------------------


@pytest.mark.parametrize("name", ["annotations_train.json", "poses_train.json"])
def test_navila_file_symlinked_out_of_the_root_fails_its_split_only(tmp_path, name):
    outside = make_navila(tmp_path / "outside", n_episodes=1)
    root = make_navila(tmp_path / "d", n_episodes=1)
    (root / name).unlink()
    os.symlink(outside / name, root / name)
    good = make_navila(tmp_path / "good", n_episodes=1)
    s = extract(_project(tmp_path, {"nav": _navila(root), "good": _navila(good)}), ExtractOptions("train"))
    (err,) = s.errors
    assert err.startswith("dataset nav split train:") and REFUSAL in err and "allow_outside_root: true" in err, err
    assert name in err and _stage(s, "good").episodes_ok == 2


def test_rover_table_symlinked_out_of_the_root_is_refused(tmp_path):
    outside, root = tmp_path / "outside", tmp_path / "rover"
    outside.mkdir()
    root.mkdir()
    pq.write_table(pa.table({"clip_id": ["a"], "video": ["a.mp4"], "fps": [10.0], "telemetry": [[0.0] * 8],
                             "risk": ["low"], "reason": ["human"], "action": ["stop"]}), outside / "train.parquet")
    os.symlink(outside / "train.parquet", root / "train.parquet")
    with pytest.raises(DatasetError, match=f"rover option 'table' .*{REFUSAL}"):
        make_source("rover", root).episodes("train")
    assert [e.episode_id for e in make_source("rover", root, allow_outside_root=True).episodes("train")] == ["a"]


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_option_paths_out_of_the_root_need_the_flag(tmp_path, where):
    data = make_navila(tmp_path / "d", n_episodes=1)
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(data / "train", root / "train")  # refused on its own without the flag
    (tmp_path / "ann_train.json").write_bytes((data / "annotations_train.json").read_bytes())
    (tmp_path / "poses_train.json").write_bytes((data / "poses_train.json").read_bytes())
    ann = str(tmp_path / "ann_{split}.json") if where == "absolute" else "../ann_{split}.json"
    poses = str(tmp_path / "poses_{split}.json") if where == "absolute" else "../poses_{split}.json"
    with pytest.raises(DatasetError, match=f"navila option 'annotations' for split 'train': .*{REFUSAL}"):
        NavilaSource(root, annotations=ann).episodes("train")
    (root / "annotations_train.json").write_bytes((data / "annotations_train.json").read_bytes())
    with pytest.raises(DatasetError, match="navila option 'annotations'"):
        NavilaSource(root, annotations="/etc/passwd").episodes("train")  # never opened
    with pytest.raises(DatasetError, match=f"navila option 'poses' for split 'train': .*{REFUSAL}"):
        NavilaSource(root, poses=poses).episodes("train")
    s = extract(_project(tmp_path, {"nav": _navila(root, annotations=ann, poses=poses, allow_outside_root=True)}),
                ExtractOptions("train"))
    assert not s.errors and _stage(s, "nav").episodes_ok == 2


def test_allow_outside_root_must_be_a_flag(tmp_path):
    with pytest.raises(ConfigError, match=r"datasets\.nav\.options\.allow_outside_root: expected true/false"):
        _project(tmp_path, {"nav": _navila(tmp_path, allow_outside_root="yes")})


def _video(path: Path, n: int = 6) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (32, 32))
    for i in range(n):
        vw.write(np.full((32, 32, 3), i * 30, np.uint8))
    vw.release()
    return path


def test_videos_media_and_sidecars_linked_out_of_the_root(tmp_path):
    outside, root = tmp_path / "outside", tmp_path / "videos"
    _video(outside / "o.mp4")
    _video(root / "train" / "own.mp4")
    np.savez(outside / "o.gt.npz", depth=np.ones((6, 4, 4), np.float32))
    os.symlink(outside / "o.mp4", root / "train" / "linked.mp4")
    os.symlink(outside / "o.gt.npz", root / "train" / "own.gt.npz")
    eps = {e.episode_id: e for e in make_source("videos", root).episodes("train")}
    assert REFUSAL in eps["linked"].quarantine and REFUSAL in eps["own"].quarantine
    eps = {e.episode_id: e for e in make_source("videos", root, allow_outside_root=True).episodes("train")}
    assert eps["linked"].quarantine is None and eps["own"].quarantine is None
    assert eps["own"].files[-1] == (outside / "o.gt.npz").resolve()


def test_videos_frame_file_linked_out_of_the_root(tmp_path):
    """A frames folder whose sampled frame is a symlink out of the root: its episode is refused
    (the listing resolves each folder once and follows only the names its listing shows are links)."""
    import cv2

    outside, root = tmp_path / "outside", tmp_path / "videos"
    outside.mkdir()
    for name in ("clean", "leaky"):
        (root / "train" / name).mkdir(parents=True)
        for i in range(4):
            cv2.imwrite(str(root / "train" / name / f"{i:04d}.jpg"), np.full((16, 16, 3), 40 * i, np.uint8))
    cv2.imwrite(str(outside / "x.jpg"), np.zeros((16, 16, 3), np.uint8))
    os.remove(root / "train" / "leaky" / "0002.jpg")
    os.symlink(outside / "x.jpg", root / "train" / "leaky" / "0002.jpg")
    eps = {e.episode_id: e for e in make_source("videos", root).episodes("train")}
    assert eps["clean"].quarantine is None and len(eps["clean"].files) >= 4
    assert REFUSAL in eps["leaky"].quarantine
    eps = {e.episode_id: e for e in make_source("videos", root, allow_outside_root=True).episodes("train")}
    assert eps["leaky"].quarantine is None and (outside / "x.jpg").resolve() in eps["leaky"].files


# -- one bad record ------------------------------------------------------------------------------


def test_surrogates_and_huge_integers_quarantine_their_record_only(tmp_path):
    root = make_navila(tmp_path / "d", n_episodes=4)
    recs = json.loads((root / "annotations_train.json").read_text())
    vids = [r["video_id"] for r in recs]
    recs[0]["video_id"] = "ep\ud800"             # json.dumps writes the \ud800 escape
    recs[1]["frames"][2] = "ep000/\udcff.jpg"     # a surrogate the file system would even accept
    recs[2]["q"] = "walk to the \udfff"
    recs[3]["extra"] = {"ids": [1, "HUGE"]}
    recs[4]["a"] = "HUGE"
    text = json.dumps(recs).replace('"HUGE"', "1" * 5000, 1).replace('"HUGE"', "-" + "9" * 4301, 1)
    (root / "annotations_train.json").write_text(text)
    poses = json.loads((root / "poses_train.json").read_text())
    poses[vids[5]][0] = "HUGE"
    (root / "poses_train.json").write_text(json.dumps(poses).replace('"HUGE"', "7" * 6000))

    s = extract(_project(tmp_path, {"nav": _navila(root)}), ExtractOptions("train"))
    assert not s.errors, s.errors
    st = _stage(s, "nav")
    reasons = {q["episode_id"]: q["reason"] for q in st.quarantined}
    assert "'video_id': 'ep\\ud800' holds a lone surrogate" in reasons["<record #0>"], reasons
    assert "'frames'[2]" in reasons[vids[1]] and "lone surrogate" in reasons[vids[1]]
    assert "'q'" in reasons[vids[2]] and "lone surrogate" in reasons[vids[2]]
    assert "'extra'['ids'][1]: <integer literal of 5000 digits>" in reasons[vids[3]]
    assert "'a': <integer literal of 4301 digits>" in reasons[vids[4]]
    assert "integer literal of 6000 digits" in reasons[vids[5]]  # poses: the poses stage quarantines it
    assert len(reasons) == 6 and st.episodes_ok == 8 - 6 and st.finalized


def test_a_file_that_is_one_huge_integer_still_fails_its_split(tmp_path):
    root = make_navila(tmp_path / "d", n_episodes=1)
    (root / "poses_train.json").write_text("9" * 5000)
    with pytest.raises(DatasetError, match="unreadable JSON: the whole file is an <integer literal of 5000 digits>"):
        NavilaSource(root).episodes("train")


# -- code and weights ----------------------------------------------------------------------------


@pytest.fixture
def noisy_module(tmp_path, monkeypatch) -> Path:
    """An importable module that leaves a marker file when imported."""
    marker = tmp_path / "imported"
    (tmp_path / "navcache_test_noisy.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nclass Model:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop("navcache_test_noisy", None)


def test_vggt_model_class_outside_the_allow_list_is_never_imported(tmp_path, noisy_module):
    geometry = {"provider": "vggt", "vggt": {"model": str(tmp_path), "model_class": "navcache_test_noisy:Model"}}
    data = {"cache_root": str(tmp_path / "cache"), "datasets": {}, "stages": {"geometry": geometry}}
    with pytest.raises(ConfigError, match=r"stages\.geometry\.vggt: model_class 'navcache_test_noisy:Model' is not an "
                                          r"allowed VGGT class .*allow_custom_code: true"):
        config_from_dict(data, tmp_path)
    assert not noisy_module.exists()
    geometry["vggt"]["allow_custom_code"] = True
    cfg = config_from_dict(data, tmp_path)
    settings = cfg.stage_settings("geometry").vggt
    assert VGGTAdapter(settings)._import_class().__name__ == "Model" and noisy_module.exists()


def test_vggt_allow_list_keeps_vggt_and_the_stand_in():
    assert VGGTSettings().model_class == "vggt.models.vggt:VGGT"  # the default needs no flag
    cls = VGGTAdapter(VGGTSettings(model_class="tests.standins.vggt_standin:StandInVGGT"))._import_class()
    assert cls.__name__ == "StandInVGGT"


class _Bomb:
    """Unpickling this runs ``Path(marker).touch()``: what a pickled checkpoint can do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_encoder_weights_are_never_unpickled(tmp_path, tiny_model):
    import shutil

    import torch

    from navcache.pipeline.encoders.hf_vision import EncoderSettings, HFVisionEncoder

    marker = tmp_path / "unpickled"
    both = shutil.copytree(tiny_model, tmp_path / "both")
    torch.save({"w": _Bomb(str(marker))}, both / "pytorch_model.bin")
    model = HFVisionEncoder(EncoderSettings(model=str(both), device="cpu"))._load_model()  # the safetensors
    assert sum(p.numel() for p in model.parameters()) > 0 and not marker.exists()
    only_bin = shutil.copytree(both, tmp_path / "only-bin", ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do, as long as nothing ran
        HFVisionEncoder(EncoderSettings(model=str(only_bin), device="cpu"))._load_model()
    assert not marker.exists()
