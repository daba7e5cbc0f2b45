"""Sources declare the record fields that change what they give; the declarations are checked by
behaviour: each field of real episodes is perturbed in turn, and wherever the decoded frames, the
ground truth or a stage's prepared rows change, the field must be in that stage's fingerprint."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from navcache.pipeline.config import config_from_dict
from navcache.pipeline.errors import ConfigError
from navcache.pipeline.fingerprint import FileHasher, episode_fingerprint
from navcache.pipeline.sources import make_source, source_options
from navcache.pipeline.sources.base import Episode, Frames
from navcache.pipeline.sources.fields import SPLIT_FIELDS, UndeclaredField, declared_fields
from navcache.pipeline.sources.navila import NavilaSource
from navcache.pipeline.sources.options import NavilaOptions, VideosOptions
from navcache.pipeline.stages.base import Stage
from navcache.pipeline.stages.frame_features import FrameFeaturesSettings, FrameFeaturesStage
from navcache.pipeline.stages.geometry import GeometrySettings, GeometryStage
from navcache.pipeline.stages.keyframes import KeyframesSettings, KeyframesStage
from navcache.pipeline.stages.poses import PosesSettings, PosesStage
from navcache.pipeline.stages.rover_meta import RoverMetaSettings, RoverMetaStage
from tests import helpers

W, H = 32, 24
DELETED = object()


# -- datasets ---------------------------------------------------------------------------------------


def write_video(path: Path, n: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (W, H))
    assert vw.isOpened()
    for i in range(n):
        vw.write(np.full((H, W, 3), ((i * 37) % 256, (i * 91 + 50) % 256, 255 - (i * 53) % 256), np.uint8))
    vw.release()
    return path


def rover_data(root: Path) -> Path:
    rows = []
    for i, n in enumerate((12, 15)):
        write_video(root / f"clips/c{i}.mp4", n)
        rows.append({"clip_id": f"c{i}", "video": f"clips/c{i}.mp4", "fps": 10.0, "n_frames": n,
                     "telemetry": [0.1 * i, 0.0, 9.8, 0.0, 0.0, 0.1, 0.5, 0.0], "risk": "low", "reason": "human",
                     "action": "slow", "weight": 1.5})
    types = {"clip_id": pa.string(), "video": pa.string(), "fps": pa.float64(), "n_frames": pa.int64(),
             "telemetry": pa.list_(pa.float64()), "risk": pa.string(), "reason": pa.string(), "action": pa.string(), "weight": pa.float64()}
    pq.write_table(pa.table({k: pa.array([r[k] for r in rows], type=t) for k, t in types.items()}), root / "train.parquet")
    return root


def videos_data(root: Path) -> Path:
    n = 9
    write_video(root / "train/scene/cam0.mp4", n)
    (root / "train/scene/cam0.json").write_text(json.dumps({"fps": 10, "note": "walk"}))
    frames = root / "train/scene/cam1"
    frames.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(n):
        assert cv2.imwrite(str(frames / f"{k:04d}.png"), rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    yaw = np.linspace(0, 1, n)
    rot = np.stack([np.stack([np.sin(yaw), -np.cos(yaw), 0 * yaw], -1), np.broadcast_to([0.0, 0.0, -1.0], (n, 3)),
                    np.stack([np.cos(yaw), np.sin(yaw), 0 * yaw], -1)], axis=1)
    extr = np.concatenate([rot, np.arange(n, dtype=float)[:, None, None] * np.ones((n, 3, 1))], axis=2)
    depth = (np.arange(n, dtype=np.float32)[:, None, None] + 1) * np.ones((n, 6, 5), np.float32)
    k = np.array([[4.0, 0, 2.0], [0, 4.0, 2.5], [0, 0, 1]])
    for cam in ("cam0", "cam1"):
        np.savez_compressed(root / f"train/scene/{cam}.gt.npz", depth=depth, extrinsics=extr, intrinsics=k)
    return root


@dataclass
class Case:
    """A source over real files, with the stages whose outputs are checked against their fingerprints."""

    source: Any
    stages: list[Stage]


def stage_cases(source) -> list[Stage]:
    stages: list[Stage] = [FrameFeaturesStage(FrameFeaturesSettings(), source, {}), GeometryStage(GeometrySettings(), source, {}),
                           KeyframesStage(KeyframesSettings(), source, {})]
    if source.kind == "rover":
        stages.append(RoverMetaStage(RoverMetaSettings(), source, {}))
    else:
        stages.append(PosesStage(PosesSettings(), source, {}))
    if source.kind == "videos":
        stages.append(GeometryStage(GeometrySettings(provider="gt", image_size=(6, 5), stride=1), source, {}))
    return stages


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Case]:
    tmp = tmp_path_factory.mktemp("fields")
    sources = [
        NavilaSource(helpers.make_navila(tmp / "navila", n_episodes=2, size=32), num_frames=4),
        make_source("rover", rover_data(tmp / "rover"), num_frames=4),
        make_source("videos", videos_data(tmp / "videos"), num_frames=4),
    ]
    return {s.kind: Case(s, stage_cases(s)) for s in sources}


# -- what each stage gets out of an episode -----------------------------------------------------------


def digest(obj: Any) -> str:
    h = hashlib.sha256()

    def feed(o: Any) -> None:
        if isinstance(o, Frames):
            feed((o.pixels, o.indices, o.padded))
        elif isinstance(o, np.ndarray) or np.isscalar(o):
            a = np.asarray(o)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        elif isinstance(o, dict):
            for k in sorted(o):
                h.update(k.encode())
                feed(o[k])
        elif isinstance(o, (list, tuple)):
            for v in o:
                feed(v)
        else:
            h.update(repr(o).encode())

    feed(obj)
    return h.hexdigest()


def outcome(fn: Callable[[], Any]) -> tuple[str, str]:
    try:
        return ("ok", digest(fn()))
    except UndeclaredField:
        raise
    except Exception as e:  # noqa: BLE001 - a changed error is a changed output too
        return (type(e).__name__, str(e))


def outputs(stage: Stage, ep: Episode) -> dict[str, tuple[str, str]]:
    """Everything the stage derives from the episode before its model runs."""
    src = stage.source
    if isinstance(stage, GeometryStage) and stage.adapter is None:
        return {"gt": outcome(lambda: src.load_gt_geometry(ep)), "prepare": outcome(lambda: stage._from_gt(ep))}
    if isinstance(stage, (FrameFeaturesStage, GeometryStage)):
        # frame-features and vggt decode exactly this (sampled frames, or the keyframes' indices)
        return {"frames": outcome(lambda: src.read_frames(ep)), "indices": outcome(lambda: src.read_frames(ep, [0, 2, 1]))}
    if isinstance(stage, KeyframesStage):
        return {}  # it reads the geometry rows only
    return {"prepare": outcome(lambda: stage.prepare(ep, {}).payload)}


def variants(v: Any) -> list[Any]:
    """Values near ``v`` of the same shape, each different from it."""
    out: list[Any] = []
    if isinstance(v, bool):
        out = [not v]
    elif isinstance(v, int):
        out = [v + 1, v - 1, 0]
    elif isinstance(v, float):
        out = [v + 1.0, v * 0.5]
    elif isinstance(v, str):
        out = [v + "x", ""]
    elif isinstance(v, list):
        out = [v[::-1], v[:-1], v[1:] + v[:1], v + v[-1:]]
        if v:
            out += [variants(v[0])[0:1] + v[1:], v[:-1] + variants(v[-1])[0:1]]
    elif isinstance(v, dict):
        out = [{**v, "_perturbed": 1}, {}]
    elif v is None:
        out = [0, "x", [0]]
    return [o for o in out if o != v]


def find_undeclared(stage: Stage, episodes: list[Episode], split: str = "train") -> tuple[list[str], set[str]]:
    """(violations, fields whose change changed an output) over every field of every episode."""
    hasher = FileHasher()
    root = Path(stage.source.root)
    violations, mattering = [], set()
    for ep in episodes:
        base = outputs(stage, ep)
        fp = episode_fingerprint(ep, root, hasher, stage.files_read(ep), stage.record_keys)
        for field, value in ep.record.items():
            for new in [DELETED, *variants(value)]:
                rec = {k: v for k, v in ep.record.items() if k != field}
                if new is not DELETED:
                    rec[field] = new
                changed = Episode(ep.episode_id, rec, ep.files, None)
                if outputs(stage, changed) == base:
                    continue
                mattering.add(field)
                if field in SPLIT_FIELDS and field in declared_fields(stage.source, stage.uses or ()) and value == split:
                    continue  # declared; constant within a split's caches
                if episode_fingerprint(changed, root, hasher, stage.files_read(changed), stage.record_keys) == fp:
                    violations.append(f"{stage.name} on {stage.source.kind} episode {ep.episode_id}: {field}={new!r} changes the output, not the fingerprint")
    return violations, mattering


@pytest.mark.parametrize("kind", ["navila", "rover", "videos"])
def test_a_field_that_changes_an_output_is_in_the_fingerprint(cases, kind):
    case = cases[kind]
    episodes = [e for e in case.source.episodes("train") if e.quarantine is None][:2]
    assert len(episodes) == 2
    mattering_all = set()
    for stage in case.stages:
        for ep in episodes:  # reading through the declarations works on good episodes
            for name, got in outputs(stage, ep).items():
                assert got[0] != "UndeclaredField", (stage.name, name, got)
        violations, mattering = find_undeclared(stage, episodes)
        assert violations == []
        mattering_all |= mattering
    # the perturbations reach the decoders: the sampling and the file layout matter everywhere
    assert {"n_frames"} <= mattering_all
    assert ("sample_indices" in mattering_all) == (kind != "rover")


def test_the_check_catches_a_source_that_reads_an_undeclared_field(cases, tmp_path):
    class Leaky(NavilaSource):
        """Reads n_pad behind the declarations' back, and declares frames without it."""

        record_fields = {**NavilaSource.record_fields, "frames": ("frames", "sample_indices", "split")}

        def read_frames(self, episode, indices=None, **kw):
            f = super().read_frames(episode, indices, **kw)
            keep = int(episode.record["n_pad"])  # not read through declared_record
            return Frames(f.pixels[keep:], f.indices[keep:], f.padded[keep:])

    src = Leaky(cases["navila"].source.root, num_frames=8)  # 5-frame histories get 3 black frames
    ep = next(e for e in src.episodes("train") if e.record["n_pad"] > 0)
    violations, _ = find_undeclared(FrameFeaturesStage(FrameFeaturesSettings(), src, {}), [ep])
    assert violations and all("n_pad=" in v for v in violations)


def test_reading_an_undeclared_field_through_the_declarations_fails_loudly(cases):
    class Forgetful(NavilaSource):
        record_fields = {**NavilaSource.record_fields, "frames": ("frames", "split")}  # sample_indices left out

    src = Forgetful(cases["navila"].source.root, num_frames=4)
    ep = src.episodes("train")[0]
    with pytest.raises(UndeclaredField, match="'sample_indices'.*declared: frames, split"):
        src.read_frames(ep)
    # .get() and `in` must not hide an undeclared field behind a default
    rec = FrameFeaturesStage(FrameFeaturesSettings(), src, {}).record(ep)
    with pytest.raises(UndeclaredField):
        rec.get("sample_indices", [])
    with pytest.raises(UndeclaredField):
        "n_pad" in rec  # noqa: B015
    assert dict(rec) == {k: ep.record[k] for k in ("frames", "split")}


def test_stage_fingerprint_fields_come_from_the_source(cases):
    nav, rov, vid = (cases[k].source for k in ("navila", "rover", "videos"))
    ff = lambda s: FrameFeaturesStage(FrameFeaturesSettings(), s, {}).record_keys  # noqa: E731
    # the same stage covers each source's own fields; split stays out (SPLIT_FIELDS)
    assert ff(nav) == ("frames", "n_frames", "n_pad", "sample_indices")
    assert ff(rov) == ("n_frames", "video")
    assert ff(vid) == ("kind", "media", "n_frames", "sample_indices")
    assert RoverMetaStage(RoverMetaSettings(), rov, {}).record_keys == tuple(sorted(rov.record_fields["labels"]))


def test_a_stage_needing_fields_the_source_lacks_is_a_config_error(cases):
    with pytest.raises(ConfigError, match="stage 'poses' reads the records' poses fields, which source 'rover' does not have"):
        PosesStage(PosesSettings(), cases["rover"].source, {})
    with pytest.raises(ConfigError, match="'rover-meta'.*labels.*'navila'"):
        RoverMetaStage(RoverMetaSettings(), cases["navila"].source, {})


def test_a_stage_cannot_list_record_keys_by_hand():
    with pytest.raises(TypeError, match="declare `uses`"):
        type("Handwritten", (Stage,), {"name": "x", "record_keys": ("frames",)})


# -- source options ----------------------------------------------------------------------------------


def test_options_are_frozen_dataclasses(tmp_path):
    src = NavilaSource(tmp_path, num_frames=6)
    assert src.options == NavilaOptions(num_frames=6) and src.num_frames == 6
    with pytest.raises(AttributeError):
        src.options.num_frames = 2  # type: ignore[misc]
    assert source_options("videos", {"split_list": "{split}.txt"}) == VideosOptions(split_list="{split}.txt")


@pytest.mark.parametrize("options,message", [
    ({"num_frames": "x"}, "datasets.nav.options.num_frames: expected an integer, got 'x'"),
    ({"num_frames": 1}, "datasets.nav.options: 'num_frames' must be an integer >= 2, got 1"),
    ({"images": "{split}/{cam}"}, "datasets.nav.options: 'images' = '{split}/{cam}': only the placeholder {split} is allowed"),
    ({"frames": 8}, "datasets.nav.options: unknown field 'frames' (valid: allow_outside_root, annotations, images, max_image_pixels, num_frames, poses)"),
])
def test_project_file_options_errors_name_the_field(tmp_path, options, message):
    doc = {"cache_root": "cache", "datasets": {"nav": {"source": "navila", "root": "data", "options": options}}}
    with pytest.raises(ConfigError) as err:
        config_from_dict(doc, tmp_path)
    assert message in str(err.value)


def test_valid_project_file_options_load(tmp_path):
    doc = {"cache_root": "cache", "datasets": {"v": {"source": "videos", "root": "data", "options": {"num_frames": 16, "split_list": None}}}}
    assert config_from_dict(doc, tmp_path).datasets["v"].options == {"num_frames": 16, "split_list": None}
