"""Fingerprints: rerun skips, a change recomputes exactly the affected parts and their downstream."""
from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pytest

from navcache.cache_specs import open_cache
from navcache.pipeline.config import load_config
from navcache.pipeline.runner import ExtractOptions, extract
from tests.helpers import make_navila, write_project


def built(summary) -> dict[str, int]:
    return {s.stage: s.parts_built for s in summary.stages}


@pytest.fixture()
def project(tmp_path, tiny_model):
    data = make_navila(tmp_path / "data", n_episodes=6)  # 12 records -> 3 parts of 4
    cfg = write_project(tmp_path, data, tiny_model, part_size=4)
    s = extract(load_config(cfg), ExtractOptions("train"))
    assert not s.errors and built(s) == {"poses": 3, "frame-features": 3}
    return tmp_path, cfg, data


def test_rerun_skips_everything(project):
    _, cfg, _ = project
    assert built(extract(load_config(cfg), ExtractOptions("train"))) == {"poses": 0, "frame-features": 0}


def test_changed_frame_recomputes_one_feature_part_only(project):
    tmp, cfg, data = project
    c0 = open_cache(tmp / "cache/nav/train/frame_features")
    before = c0["ep004-13"]["cls"].copy()
    # ep004-13 has 15 frames: its last frame (14) is always sampled; it lives in the last part
    f = data / "train/ep004/frame_013.jpg"
    cv2.imwrite(str(f), 255 - cv2.imread(str(f)))
    s = extract(load_config(cfg), ExtractOptions("train"))
    assert built(s) == {"poses": 0, "frame-features": 1}
    after = open_cache(tmp / "cache/nav/train/frame_features")["ep004-13"]["cls"]
    assert not np.array_equal(before[-1], after[-1]) and np.array_equal(before[:-1], after[:-1])


def test_touch_and_moving_cache_root_recompute_nothing(project):
    tmp, cfg, data = project
    for f in (data / "train").rglob("*.jpg"):
        os.utime(f, (1e9, 1e9))
    assert built(extract(load_config(cfg), ExtractOptions("train"))) == {"poses": 0, "frame-features": 0}
    shutil.move(tmp / "cache", tmp / "moved")
    cfg.write_text(cfg.read_text().replace("cache_root: cache", "cache_root: moved"))
    assert built(extract(load_config(cfg), ExtractOptions("train"))) == {"poses": 0, "frame-features": 0}
    assert len(open_cache(tmp / "moved/nav/train/frame_features")) == 12


def test_setting_change_recomputes_that_stage_only(project, tiny_model):
    tmp, cfg, data = project
    write_project(tmp, data, tiny_model, part_size=4, pool_grid=1)
    s = extract(load_config(cfg), ExtractOptions("train"))
    assert built(s) == {"poses": 0, "frame-features": 3}
    assert open_cache(tmp / "cache/nav/train/frame_features").load("patch_pooled").shape[1:3] == (1, 1)


def test_changed_pose_recomputes_one_pose_part(project):
    tmp, cfg, data = project
    poses = json.loads((data / "poses_train.json").read_text())
    poses["ep000-4"][4] = [9.0, 9.0, 0.0]
    (data / "poses_train.json").write_text(json.dumps(poses))
    s = extract(load_config(cfg), ExtractOptions("train"))
    assert built(s) == {"poses": 1, "frame-features": 0}
    assert open_cache(tmp / "cache/nav/train/poses")["ep000-4"]["poses"][-1].tolist() == [9.0, 9.0, 0.0]


def test_encoder_weights_change_recomputes_features(project, tmp_path_factory):
    from navcache.pipeline.encoders.tiny import make_random_dinov3

    tmp, cfg, data = project
    other = make_random_dinov3(tmp_path_factory.mktemp("m2") / "dinov3-tiny-seed1", size="tiny", seed=1, image_size=64)
    write_project(tmp, data, other, part_size=4)
    assert built(extract(load_config(cfg), ExtractOptions("train"))) == {"poses": 0, "frame-features": 3}


def test_only_builds_stage_and_its_needs(project):
    tmp, cfg, _ = project
    shutil.rmtree(tmp / "cache")
    s = extract(load_config(cfg), ExtractOptions("train", only="poses"))
    assert [x.stage for x in s.stages] == ["poses"]
    assert not (tmp / "cache/nav/train/frame_features").exists()


class _Killed(BaseException):
    """Stands for SIGKILL at that point: nothing after it runs."""


def test_kill_after_a_shrink_never_leaves_a_complete_cache_pointing_at_deleted_parts(project, monkeypatch):
    import navcache.cache_specs.finalize as fin
    from navcache.cache_specs.manifest import IncompleteCache
    from navcache.cache_specs.verify import verify_cache

    tmp, cfg, data = project
    poses = tmp / "cache/nav/train/poses"
    recs = json.loads((data / "annotations_train.json").read_text())
    (data / "annotations_train.json").write_text(json.dumps(recs[:8]))  # 12 -> 8 records: part 2 goes

    def killed(*a, **k):
        raise _Killed

    # a kill before the new manifest lands: the cache is incomplete, no part was deleted yet
    monkeypatch.setattr(fin, "write_cache_files", killed)
    with pytest.raises(_Killed):
        extract(load_config(cfg), ExtractOptions("train"))
    monkeypatch.undo()
    assert (poses / "parts/part-00002").exists()
    with pytest.raises(IncompleteCache):
        open_cache(poses)
    # a kill after it, before the superseded part is deleted: complete, and every part it lists exists
    monkeypatch.setattr(fin, "sweep", killed)
    with pytest.raises(_Killed):
        extract(load_config(cfg), ExtractOptions("train"))
    monkeypatch.undo()
    assert len(open_cache(poses).episodes) == 8
    assert [(d.kind, d.part) for d in verify_cache(poses)] == [("orphan_part", "part-00002")]
    s = extract(load_config(cfg), ExtractOptions("train"))
    assert not s.errors and built(s) == {"poses": 0, "frame-features": 0}
    assert not (poses / "parts/part-00002").exists()
    assert len(open_cache(poses).episodes) == 8 and verify_cache(poses) == []


def test_backend_switch_rebuilds_every_part(project):
    import yaml

    from navcache.cache_specs.layout import PARTS
    from navcache.cache_specs.parts import read_part_meta

    tmp, cfg, _ = project
    doc = yaml.safe_load(cfg.read_text())
    doc["backend"] = "hdf5"
    cfg.write_text(yaml.safe_dump(doc))
    s = extract(load_config(cfg), ExtractOptions("train"))
    assert built(s) == {"poses": 3, "frame-features": 3}
    for stage in ("poses", "frame_features"):
        parts = tmp / "cache/nav/train" / stage / PARTS
        assert {read_part_meta(p)["backend"] for p in parts.iterdir()} == {"hdf5"}
        assert open_cache(tmp / "cache/nav/train" / stage).manifest["backend"] == "hdf5"


def test_rewording_an_array_doc_recomputes_nothing(project, monkeypatch):
    import dataclasses

    import navcache.pipeline.stages.poses as poses_stage
    from navcache.cache_specs.specs import get_spec

    _, cfg, _ = project
    spec = get_spec("poses")
    reworded = dataclasses.replace(spec, arrays=tuple(dataclasses.replace(a, doc=a.doc + " (reworded)") for a in spec.arrays))
    monkeypatch.setattr(poses_stage, "get_spec", lambda name: reworded)
    assert built(extract(load_config(cfg), ExtractOptions("train"))) == {"poses": 0, "frame-features": 0}


def test_a_rerun_removes_index_temp_files_a_kill_left(project):
    tmp, cfg, _ = project
    debris = tmp / "cache/nav/train/poses/.tmp-index.parquet-7326-59ccf2db"
    debris.write_bytes(b"PAR1 half")
    extract(load_config(cfg), ExtractOptions("train"))
    assert not debris.exists()


def test_two_jobs_share_the_file_hash_memo_without_locking_each_other(tmp_path):
    from navcache.pipeline.fingerprint import FileHasher

    files = []
    for i in range(2):
        files.append(tmp_path / f"f{i}")
        files[-1].write_bytes(bytes([i]) * 100)
    a, b = FileHasher(tmp_path / "memo.sqlite"), FileHasher(tmp_path / "memo.sqlite")
    try:
        ha = a(files[0])  # job A is still planning (its hasher stays open) when job B hashes
        hb = b(files[1])
        assert ha != hb and b(files[0]) == ha
    finally:
        a.close()
        b.close()
    c = FileHasher(tmp_path / "memo.sqlite")
    try:
        assert c._db.execute("SELECT COUNT(*) FROM h").fetchone()[0] == 2  # both memos persisted
    finally:
        c.close()


def test_a_cache_that_cannot_be_finalized_is_reported_and_the_run_goes_on(project, monkeypatch):
    import navcache.pipeline.runner as runner
    from navcache.cache_specs.manifest import IncompleteCache

    tmp, cfg, data = project
    f = data / "train/ep004/frame_013.jpg"
    cv2.imwrite(str(f), 255 - cv2.imread(str(f)))  # frame-features must rebuild a part and finalize
    real = runner.finalize

    def finalize(cache_dir, layout, parts, info, stats_fn, **kw):
        if info["stage"] == "frame-features":  # as when a stray writer replaced a part meanwhile
            raise IncompleteCache(f"{cache_dir}: parts not built or stale: part-00002")
        return real(cache_dir, layout, parts, info, stats_fn, **kw)

    monkeypatch.setattr(runner, "finalize", finalize)
    s = extract(load_config(cfg), ExtractOptions("train"))
    assert s.errors == ["nav/train/frame-features: not finalized: IncompleteCache: "
                        f"{tmp / 'cache/nav/train/frame_features'}: parts not built or stale: part-00002"]
    assert [st.finalized for st in s.stages] == [True, False]


def _videos_project(tmp_path, tiny_model, stages):
    from navcache.pipeline.config import config_from_dict
    from navcache.pipeline.demo import video_writer

    split = tmp_path / "data/train"
    split.mkdir(parents=True)
    for name in ("a", "b"):
        w = cv2.VideoWriter(str(split / f"{name}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (32, 32))
        for i in range(8):
            w.write(np.full((32, 32, 3), 20 * i + (name == "b") * 7, np.uint8))
        w.release()
        poses = np.stack([np.linspace(0, 1, 8), np.zeros(8), np.linspace(0, 0.5, 8)], 1)
        np.savez(split / f"{name}.gt.npz", depth=np.full((8, 32, 32), 2.0, np.float32), extrinsics=video_writer.extrinsics(poses),
                 intrinsics=np.array([[16.0, 0, 15.5], [0, 16.0, 15.5], [0, 0, 1]]))
    cfg = {"cache_root": str(tmp_path / "cache"),
           "datasets": {"d": {"source": "videos", "root": str(tmp_path / "data"), "splits": ["train"], "stages": stages, "options": {"num_frames": 4}}},
           "stages": {"geometry": {"provider": "gt", "image_size": [32, 32], "stride": 1}, "keyframes": {"num_keyframes": 2},
                      "frame-features": {"encoder": {"model": str(tiny_model)}}}}
    return config_from_dict(cfg, tmp_path), split


def test_a_changed_gt_sidecar_recomputes_geometry_not_frame_features(tmp_path, tiny_model):
    project, split = _videos_project(tmp_path, tiny_model, ["geometry", "frame-features"])
    s = extract(project, ExtractOptions("train"))
    assert not s.errors and {x.stage: x.episodes_built for x in s.stages} == {"geometry": 2, "frame-features": 2}
    gt = dict(np.load(split / "a.gt.npz"))
    gt["depth"] = gt["depth"] * 1.5
    np.savez(split / "a.gt.npz", **gt)
    s = extract(project, ExtractOptions("train"))
    assert not s.errors and {x.stage: x.episodes_built for x in s.stages} == {"geometry": 1, "frame-features": 0}
    assert float(open_cache(tmp_path / "cache/d/train/geometry")["a"]["depth"].max()) == pytest.approx(3.0)


def test_an_upstream_part_replaced_after_planning_fails_the_build(tmp_path, tiny_model):
    from navcache.cache_specs.layout import PARTS
    from navcache.pipeline.executors.local import UpstreamChanged, build_parts
    from navcache.pipeline.plan import plan_split

    project, _ = _videos_project(tmp_path, tiny_model, ["geometry", "keyframes"])
    assert not extract(project, ExtractOptions("train", only="geometry")).errors
    geo, keys = plan_split(project, "d", "train")
    assert not geo.todo and keys.todo
    pj = geo.cache_dir / PARTS / geo.parts[0].part_id / "part.json"
    meta = json.loads(pj.read_text())
    meta["fingerprint"] = "a-stray-writer"  # as if another run replaced the part meanwhile
    pj.write_text(json.dumps(meta))
    with pytest.raises(UpstreamChanged, match="replaced since planning"):
        build_parts(keys, keys.todo, project.backend, project.chunk_rows, project.run)
    assert not (keys.cache_dir / PARTS).exists() or not any((keys.cache_dir / PARTS).glob("part-*"))
