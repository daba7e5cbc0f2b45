"""The ``videos`` source on real mp4/avi/mov/mkv files and JPEG/PNG folders written into tmp_path."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from navcache.pipeline.errors import ConfigError, DatasetError, Quarantine
from navcache.pipeline.fingerprint import FileHasher, episode_fingerprint
from navcache.pipeline.sources import SOURCES, make_source
from navcache.pipeline.sources.base import Episode
from navcache.pipeline.sources.videos import VideosSource
from tests import helpers

W = H = 32
FOURCC = {".mp4": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}


def colour(i: int) -> tuple[int, int, int]:
    """Solid RGB colour of frame i: neighbours differ by >= 37 in some channel, and R != B."""
    return ((i * 37) % 256, (i * 91 + 50) % 256, 255 - (i * 53) % 256)


def write_video(path: Path, n: int, fps: float = 10.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC[path.suffix.lower()]), fps, (W, H))
    assert vw.isOpened()
    for i in range(n):
        vw.write(np.full((H, W, 3), colour(i)[::-1], np.uint8))
    vw.release()
    return path


def noise(i: int) -> np.ndarray:
    """uint8 [H, W, 3] RGB noise seeded by i: PNG must give it back bit for bit."""
    return np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8)


def write_frames(folder: Path, names: list[str], jpeg_colours: bool = False) -> Path:
    """Frame k of ``names`` is noise(k) (PNG) or solid colour(k) (JPEG)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        rgb = np.full((H, W, 3), colour(k), np.uint8) if jpeg_colours else noise(k)
        assert cv2.imwrite(str(folder / name), rgb[..., ::-1].copy())
    return folder


def assert_colours(pixels: np.ndarray, frame_numbers, tol: float = 10.0) -> None:
    helpers.assert_colours(pixels, frame_numbers, colour, tol)


def by_id(episodes: list[Episode]) -> dict[str, Episode]:
    ids = [ep.episode_id for ep in episodes]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for ep in episodes:
        json.dumps(ep.record, allow_nan=False)  # records go into the cache index
    return {ep.episode_id: ep for ep in episodes}


def quarantines(eps: dict[str, Episode]) -> dict[str, str | None]:
    return {k: ep.quarantine for k, ep in eps.items()}


def save_gt(path: Path, **arrays) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def good_gt(n: int, h: int = 6, w: int = 5, per_frame_k: bool = False) -> dict[str, np.ndarray]:
    """Depth that encodes its frame number, level cameras walking along +x, 90 degree HFOV."""
    depth = (np.arange(n, dtype=np.float32)[:, None, None] + 1) * np.ones((n, h, w), np.float32)
    yaw = np.linspace(0, 1, n)
    r = np.stack([np.stack([np.sin(yaw), -np.cos(yaw), 0 * yaw], -1),
                  np.broadcast_to([0.0, 0.0, -1.0], (n, 3)),
                  np.stack([np.cos(yaw), np.sin(yaw), 0 * yaw], -1)], axis=1)
    c = np.stack([0.1 * np.arange(n), np.zeros(n), np.full(n, 0.9)], -1)
    ext = np.concatenate([r, -(r @ c[:, :, None])], axis=2).astype(np.float32)
    k = np.array([[w / 2, 0, (w - 1) / 2], [0, w / 2, (h - 1) / 2], [0, 0, 1]], np.float32)
    return {"depth": depth, "extrinsics": ext, "intrinsics": np.repeat(k[None], n, 0) if per_frame_k else k}


# ------------------------------------------------------------------------------------ listing


def test_lists_videos_and_frame_folders_recursively(tmp_path):
    split = tmp_path / "train"
    write_video(split / "a.mp4", 12)
    write_video(split / "nested" / "b.MP4", 10)
    write_video(split / "nested" / "deeper" / "c.avi", 9)
    write_frames(split / "seq1", [f"frame_{k}.png" for k in range(5)])
    write_video(split / ".hidden.mp4", 5)
    write_video(split / ".cache" / "x.mp4", 5)
    write_frames(split / "seq1" / ".thumbs", ["t1.png"])  # hidden: seq1 stays a frames folder
    (split / "notes.txt").write_text("not media")
    (split / "empty").mkdir()

    src = VideosSource(tmp_path, num_frames=4)
    eps = by_id(src.episodes("train"))
    assert list(eps) == ["a", "nested/b", "nested/deeper/c", "seq1"]
    assert all(q is None for q in quarantines(eps).values()), quarantines(eps)

    a = eps["a"].record
    assert a == {"split": "train", "media": "train/a.mp4", "kind": "video", "n_frames": 12,
                 "sample_indices": [0, 3, 7, 11], "fps": 10.0, "meta": {}, "gt_geometry": None}
    assert eps["a"].files == ((tmp_path / "train" / "a.mp4").resolve(),)
    assert eps["nested/b"].record["media"] == "train/nested/b.MP4" and eps["nested/b"].record["n_frames"] == 10
    assert eps["nested/deeper/c"].record["n_frames"] == 9 and eps["nested/deeper/c"].record["fps"] == 10.0

    seq = eps["seq1"]
    assert seq.record["kind"] == "frames" and seq.record["media"] == "train/seq1"
    assert seq.record["n_frames"] == 5 and seq.record["fps"] is None
    assert seq.record["sample_indices"] == [0, 1, 2, 4]
    # only the sampled frames are listed (and fingerprinted)
    assert seq.files == tuple((split / "seq1" / f"frame_{k}.png").resolve() for k in (0, 1, 2, 4))
    assert src.report["episodes"] == 4 and src.report["quarantined"] == 0


@pytest.mark.parametrize("ext", [".mp4", ".avi", ".mov", ".mkv"])
def test_each_container_counts_and_decodes(tmp_path, ext):
    write_video(tmp_path / "val" / f"clip{ext}", 17, fps=12.0)
    src = VideosSource(tmp_path, num_frames=5)
    (ep,) = src.episodes("val")
    assert ep.quarantine is None and ep.episode_id == "clip"
    assert ep.record["n_frames"] == 17 and ep.record["fps"] == pytest.approx(12.0)
    frames = src.read_frames(ep)
    assert frames.indices.tolist() == [0, 4, 8, 12, 16] and not frames.padded.any()
    assert frames.pixels.shape == (5, H, W, 3) and frames.pixels.dtype == np.uint8
    assert_colours(frames.pixels, [0, 4, 8, 12, 16])


def test_custom_split_dir_and_errors(tmp_path):
    write_video(tmp_path / "data" / "val_clips" / "x.mp4", 4)
    src = make_source("videos", tmp_path, split_dir="data/{split}_clips", num_frames=2)
    (ep,) = src.episodes("val")
    assert ep.episode_id == "x" and ep.record["media"] == "data/val_clips/x.mp4"
    with pytest.raises(DatasetError, match="split folder not found"):
        src.episodes("train")
    with pytest.raises(DatasetError, match="split_dir.*outside the dataset root"):
        VideosSource(tmp_path / "data", split_dir="../{split}").episodes("x")
    # "." is the root itself: every video under it, usually narrowed by a split list
    flat = VideosSource(tmp_path / "data" / "val_clips", split_dir=".")
    assert [e.episode_id for e in flat.episodes("anything")] == ["x"]


# ---------------------------------------------------------------------------------- sampling


def test_sampling_rule_is_spatial_mllm_linspace(tmp_path):
    write_video(tmp_path / "train" / "long.mp4", 300)
    write_video(tmp_path / "train" / "short.mp4", 5)
    write_video(tmp_path / "train" / "exact.mp4", 8)
    src = VideosSource(tmp_path)  # num_frames=128
    eps = by_id(src.episodes("train"))
    idx = eps["long"].record["sample_indices"]
    assert idx == np.linspace(0, 299, 128).astype(int).tolist() and len(idx) == 128
    assert idx[:4] == [0, 2, 4, 7] and idx[-1] == 299  # first and last frame always kept
    assert eps["short"].record["sample_indices"] == [0, 1, 2, 3, 4]  # n < num_frames: every frame once
    small = by_id(VideosSource(tmp_path, num_frames=4).episodes("train"))
    assert small["exact"].record["sample_indices"] == [0, 2, 4, 7]

    frames = src.read_frames(eps["long"])
    assert frames.pixels.shape == (128, H, W, 3) and frames.indices.tolist() == idx
    assert_colours(frames.pixels, idx)


def test_min_frames(tmp_path):
    write_video(tmp_path / "train" / "one.mp4", 1)
    write_frames(tmp_path / "train" / "two", ["0.png", "1.png"])
    eps = by_id(VideosSource(tmp_path).episodes("train"))
    assert eps["one"].quarantine.endswith("has 1 frame, needs at least min_frames=2")
    assert eps["one"].files == () and eps["two"].quarantine is None
    eps = by_id(VideosSource(tmp_path, min_frames=3).episodes("train"))
    assert "has 2 frames, needs at least min_frames=3" in eps["two"].quarantine
    with pytest.raises(Quarantine, match="min_frames"):
        VideosSource(tmp_path).read_frames(by_id(VideosSource(tmp_path).episodes("train"))["one"])


# ---------------------------------------------------------------------------------- decoding


def test_png_frames_decode_exactly_in_natural_order(tmp_path):
    names = ["img1.png", "img2.png", "img10.png", "img9.png", "img100.png"]  # written as frames 0..4
    write_frames(tmp_path / "train" / "ep", names)
    src = VideosSource(tmp_path, num_frames=8)
    (ep,) = src.episodes("train")
    assert ep.quarantine is None and ep.record["n_frames"] == 5
    frames = src.read_frames(ep)
    # natural order by number: img1, img2, img9, img10, img100 = written frames 0, 1, 3, 2, 4
    np.testing.assert_array_equal(frames.pixels, np.stack([noise(k) for k in (0, 1, 3, 2, 4)]))
    override = src.read_frames(ep, indices=[4, 0, 3])
    np.testing.assert_array_equal(override.pixels, np.stack([noise(4), noise(0), noise(2)]))
    assert override.indices.tolist() == [4, 0, 3]


def test_jpeg_frames_and_numbers_with_gaps(tmp_path):
    write_frames(tmp_path / "train" / "ep", [f"{k:05d}.jpg" for k in (0, 5, 10, 15)], jpeg_colours=True)
    src = VideosSource(tmp_path)
    (ep,) = src.episodes("train")
    assert ep.record["n_frames"] == 4  # frames are counted, numbers may skip (subsampled extraction)
    assert_colours(src.read_frames(ep).pixels, [0, 1, 2, 3], tol=4)


def test_bad_frame_names_quarantine(tmp_path):
    split = tmp_path / "train"
    write_frames(split / "unnumbered", ["0001.jpg", "cover.jpg"])
    write_frames(split / "mixed", ["frame_000.jpg", "depth_000.png", "frame_001.jpg"])
    write_frames(split / "mixed_ext", ["0.jpg", "1.png"])
    write_frames(split / "dupnum", ["1.png", "01.png"])
    write_frames(split / "outer", ["0.png", "1.png"])
    write_frames(split / "outer" / "inner", ["0.png", "1.png"])
    write_frames(split / "good", ["cam1_0001.png", "cam1_0002.png"])  # the last number counts
    eps = by_id(VideosSource(tmp_path).episodes("train"))
    expected = {
        "unnumbered": "frame 'cover.jpg' has no number",
        "mixed": "different patterns: 'depth_000.png' and 'frame_000.jpg'",
        "mixed_ext": "different patterns: '0.jpg' and '1.png'",
        "dupnum": "frames '01.png' and '1.png' both have number 1",
        "outer": "folder holds images and media subfolder(s) inner",
        "outer/inner": None,
        "good": None,
    }
    assert set(eps) == set(expected)
    for eid, fragment in expected.items():
        q = eps[eid].quarantine
        assert (q is None) if fragment is None else (fragment in q and f"train/{eid}" in q), (eid, q)


def test_images_directly_in_split_folder_and_id_collisions(tmp_path):
    split = tmp_path / "train"
    write_frames(split, ["0.png", "1.png"])
    write_video(split / "a.mp4", 3)
    write_video(split / "a.avi", 3)
    write_video(split / "s" / "b.mp4", 3)
    write_frames(split / "s" / "b", ["0.png", "1.png"])
    eps = by_id(VideosSource(tmp_path).episodes("train"))
    q = quarantines(eps)
    assert "images lie directly in the split folder" in q["<split folder>"]
    # the first path in sort order keeps the id, the other one is set aside under a placeholder
    assert q["a"] is None and eps["a"].record["media"] == "train/a.avi"
    assert "episode id 'a' is already taken by 'a.avi'" in q["<duplicate a.mp4>"]
    assert q["s/b"] is None and eps["s/b"].record["kind"] == "frames"
    assert "already taken by 's/b'" in q["<duplicate s/b.mp4>"]


def test_indices_are_checked(tmp_path):
    write_video(tmp_path / "train" / "v.mp4", 6)
    write_frames(tmp_path / "train" / "f", ["0.png", "1.png", "2.png"])
    src = VideosSource(tmp_path)
    eps = by_id(src.episodes("train"))
    for eid, n in (("v", 6), ("f", 3)):
        for bad in (n, -1, 10**6):
            with pytest.raises(Quarantine, match=f"frame index {bad} out of range for {n} frames"):
                src.read_frames(eps[eid], indices=[0, bad])
    with pytest.raises(TypeError):
        src.read_frames(eps["v"], indices=[1.0])
    assert_colours(src.read_frames(eps["v"], indices=[5, 5, 0]).pixels, [5, 5, 0])


def test_truncated_and_broken_videos_quarantine(tmp_path):
    split = tmp_path / "train"
    data = write_video(split / "cut_mdat.mp4", 30).read_bytes()
    (split / "cut_mdat.mp4").write_bytes(data[: int(len(data) * 0.6)])
    data = write_video(split / "cut_tail.mp4", 30).read_bytes()
    (split / "cut_tail.mp4").write_bytes(data[:-40])
    (split / "text.mp4").write_text("not a video")
    (split / "empty.mkv").write_bytes(b"")
    write_video(split / "later.mp4", 30)
    src = VideosSource(tmp_path)
    eps = by_id(src.episodes("train"))
    expected = {"cut_mdat": "truncated video", "cut_tail": "truncated video", "text": "cannot open video",
                "empty": "empty video file", "later": None}
    for eid, fragment in expected.items():
        q = eps[eid].quarantine
        assert (q is None) if fragment is None else (fragment in q and eid in q), (eid, q)

    # a file damaged after listing: read_frames refuses, it never hands back fewer frames
    good = eps["later"]
    data = (split / "later.mp4").read_bytes()
    for cut in (0.6, 0.95):
        (split / "later.mp4").write_bytes(data[: int(len(data) * cut)])
        with pytest.raises(Quarantine, match="later.mp4"):
            src.read_frames(good)
    (split / "later.mp4").unlink()
    with pytest.raises(Quarantine, match="missing video file"):
        src.read_frames(good)


def test_frame_count_change_after_listing_is_refused(tmp_path):
    write_video(tmp_path / "train" / "v.mp4", 20)
    write_frames(tmp_path / "train" / "f", [f"{k}.png" for k in range(6)])
    src = VideosSource(tmp_path, num_frames=4)
    eps = by_id(src.episodes("train"))
    write_video(tmp_path / "train" / "v.mp4", 25)
    with pytest.raises(Quarantine, match="decoder finds 25 frames.*said 20"):
        src.read_frames(eps["v"])
    (tmp_path / "train" / "f" / "5.png").unlink()
    with pytest.raises(Quarantine, match="folder now has 5 frames, 6 when listed"):
        src.read_frames(eps["f"], indices=[0])
    with pytest.raises(Quarantine, match="missing image file.*5.png"):
        src.read_frames(eps["f"])  # the sampled list still names frame 5


def test_damaged_frames_quarantine_on_read(tmp_path):
    folder = write_frames(tmp_path / "train" / "f", [f"{k}.jpg" for k in range(4)], jpeg_colours=True)
    data = (folder / "3.jpg").read_bytes()
    (folder / "3.jpg").write_bytes(data[: len(data) // 2])
    src = VideosSource(tmp_path)
    (ep,) = src.episodes("train")
    assert ep.quarantine is None  # listing never opens frames
    with pytest.raises(Quarantine, match="truncated JPEG.*3.jpg"):
        src.read_frames(ep)
    assert_colours(src.read_frames(ep, indices=[0, 2]).pixels, [0, 2], tol=4)


# --------------------------------------------------------------------------------- split lists


def test_split_list_selects_and_reports(tmp_path):
    for name in ("a", "b", "c"):
        write_video(tmp_path / "all" / f"{name}.mp4", 4)
    write_frames(tmp_path / "all" / "sub" / "d", ["0.png", "1.png"])
    (tmp_path / "all" / "broken.mp4").write_text("never probed: not listed")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text(
        "# train episodes\n\nc\n  sub/d  \r\na\nmissing\nc\nb.mp4\n# the end\n", newline="")
    src = VideosSource(tmp_path, split_dir="all", split_list="splits/{split}.txt")
    eps = by_id(src.episodes("train"))
    q = quarantines(eps)
    assert set(eps) == {"a", "c", "sub/d", "missing", "<splits/train.txt line 7>", "b.mp4"}
    assert q["a"] is None and q["c"] is None and q["sub/d"] is None
    assert q["missing"] == ("splits/train.txt line 6: no video file or frames folder for episode id 'missing' "
                            "under the split folder")
    assert q["<splits/train.txt line 7>"] == "splits/train.txt line 7: duplicate episode id 'c' (first listed on line 3)"
    assert "line 8" in q["b.mp4"] and "without the file extension" in q["b.mp4"]
    assert eps["missing"].record == {"split": "train", "split_list": "splits/train.txt", "line": 6, "listed_id": "missing"}
    assert len(src.report["media_not_listed"]) == 2  # b and broken


def test_split_list_errors(tmp_path):
    write_video(tmp_path / "train" / "a.mp4", 3)
    src = VideosSource(tmp_path, split_list="lists/{split}.txt")
    with pytest.raises(DatasetError, match="split list not found.*train.txt"):
        src.episodes("train")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "train.txt").write_bytes(b"a\n\xff\xfeb\n")
    with pytest.raises(DatasetError, match="train.txt.*not UTF-8"):
        src.episodes("train")
    (tmp_path / "lists" / "train.txt").write_bytes("\ufeffa\n".encode())  # a BOM is fine
    assert [e.episode_id for e in src.episodes("train")] == ["a"]
    with pytest.raises(DatasetError, match="split_list.*outside the dataset root"):
        VideosSource(tmp_path, split_list="../{split}.txt").episodes("train")


# ------------------------------------------------------------------------------------ sidecars


def test_json_sidecars(tmp_path):
    split = tmp_path / "train"
    for name in ("good", "broken", "array", "nan", "binary"):
        write_video(split / f"{name}.mp4", 3)
    write_frames(split / "seq", ["0.png", "1.png"])
    (split / "good.json").write_text(json.dumps({"instruction": "go to the kitchen", "tags": [1, 2]}))
    (split / "seq.json").write_text(json.dumps({"instruction": "look around", "fps": 5}))
    (split / "broken.json").write_text('{"instruction": "x",\n}')
    (split / "array.json").write_text("[1, 2]")
    (split / "nan.json").write_text('{"score": NaN}')
    (split / "binary.json").write_bytes(b'{"a": "\xff"}')
    eps = by_id(VideosSource(tmp_path).episodes("train"))
    assert eps["good"].record["meta"] == {"instruction": "go to the kitchen", "tags": [1, 2]}
    assert eps["seq"].record["meta"]["instruction"] == "look around" and eps["seq"].record["fps"] == 5.0
    expected = {
        "broken": "train/broken.json: invalid JSON at line 2 column 1",
        "array": "train/array.json: expected a JSON object, got list",
        "nan": "train/nan.json: NaN is not valid JSON",
        "binary": "train/binary.json: not UTF-8",
    }
    for eid, fragment in expected.items():
        assert fragment in eps[eid].quarantine, eps[eid].quarantine
        assert eps[eid].files == ()


def test_gt_sidecar_listed_fingerprinted_and_loaded(tmp_path):
    split = tmp_path / "train"
    write_video(split / "v.mp4", 30)
    gt = good_gt(30)
    save_gt(split / "v.gt.npz", **gt)
    src = VideosSource(tmp_path, num_frames=4)
    (ep,) = src.episodes("train")
    assert ep.quarantine is None and ep.record["gt_geometry"] == "train/v.gt.npz"
    assert ep.files == ((split / "v.mp4").resolve(), (split / "v.gt.npz").resolve())
    assert src.read_frames(ep).pixels.shape == (4, H, W, 3)  # the sidecar is not a frame

    out = src.load_gt_geometry(ep)
    idx = [0, 9, 19, 29]
    assert out["indices"].tolist() == idx
    assert out["depth"].dtype == np.float32 and out["depth"].shape == (4, 6, 5)
    np.testing.assert_array_equal(out["depth"], gt["depth"][idx])
    np.testing.assert_allclose(out["extrinsics"], gt["extrinsics"][idx])
    assert out["intrinsics"].shape == (4, 3, 3)
    np.testing.assert_allclose(out["intrinsics"], np.broadcast_to(gt["intrinsics"], (4, 3, 3)))
    again = src.load_gt_geometry(ep, indices=[29, 3, 3])
    np.testing.assert_array_equal(again["depth"][:, 0, 0], [30, 4, 4])

    # the npz content enters the fingerprint through ``files``
    hasher = FileHasher()
    before = episode_fingerprint(ep, tmp_path, hasher)
    gt["depth"][0, 0, 0] = 7
    save_gt(split / "v.gt.npz", **gt)
    (ep2,) = src.episodes("train")
    assert episode_fingerprint(ep2, tmp_path, FileHasher()) != before


def test_gt_per_frame_intrinsics_and_frames_folder(tmp_path):
    write_frames(tmp_path / "train" / "seq", [f"{k}.png" for k in range(5)])
    gt = good_gt(5, per_frame_k=True)
    gt["intrinsics"][:, 0, 0] = np.arange(5) + 10  # per-frame fx tells the rows apart
    save_gt(tmp_path / "train" / "seq.gt.npz", **gt)
    src = VideosSource(tmp_path, num_frames=3)
    (ep,) = src.episodes("train")
    assert ep.record["gt_geometry"] == "train/seq.gt.npz" and ep.files[-1].name == "seq.gt.npz"
    assert len(ep.files) == 4
    np.testing.assert_array_equal(src.read_frames(ep).pixels, np.stack([noise(k) for k in (0, 2, 4)]))
    out = src.load_gt_geometry(ep)
    assert out["intrinsics"][:, 0, 0].tolist() == [10, 12, 14]


def _bad_gt_cases(n: int) -> dict[str, tuple[dict, str]]:
    g = good_gt(n)
    nan_ext = g["extrinsics"].copy()
    nan_ext[3, 1, 2] = np.nan
    scaled = g["extrinsics"].copy()
    scaled[2, :, :3] *= 2
    bad_k = g["intrinsics"].copy()
    bad_k[2] = [0, 1, 1]
    return {
        "nodepth": ({"extrinsics": g["extrinsics"], "intrinsics": g["intrinsics"]}, "missing array 'depth'"),
        "depth2d": ({**g, "depth": g["depth"][:, 0]}, "'depth' must be float [n, H, W]"),
        "depthint": ({**g, "depth": (g["depth"] * 1000).astype(np.uint16)}, "'depth' must be float"),
        "depthn": ({**g, "depth": g["depth"][:-1]}, f"'depth' has {n - 1} frames, the episode has {n}"),
        "extshape": ({**g, "extrinsics": g["extrinsics"][:, :, :3]}, "'extrinsics' must be float [n, 3, 4]"),
        "extn": ({**g, "extrinsics": g["extrinsics"][:2]}, f"'extrinsics' has 2 frames, the episode has {n}"),
        "extnan": ({**g, "extrinsics": nan_ext}, "'extrinsics' is not finite (NaN/inf) at frame 3"),
        "extscale": ({**g, "extrinsics": scaled}, "'extrinsics' frame 2: the 3x3 part is not a rotation"),
        "kshape": ({**g, "intrinsics": g["intrinsics"][:2]}, "'intrinsics' must be float [3, 3] or [n, 3, 3]"),
        "kn": ({**g, "intrinsics": np.repeat(g["intrinsics"][None], n + 1, 0)}, f"'intrinsics' has {n + 1} frames"),
        "krow": ({**g, "intrinsics": bad_k}, "'intrinsics' must be [[fx, s, cx]"),
    }


def test_gt_violations_quarantine(tmp_path):
    n = 6
    cases = _bad_gt_cases(n)
    for name, (arrays, _) in cases.items():
        write_video(tmp_path / "train" / f"{name}.mp4", n)
        save_gt(tmp_path / "train" / f"{name}.gt.npz", **arrays)
    write_video(tmp_path / "train" / "pickled.mp4", n)
    obj = np.empty(n, dtype=object)
    obj[:] = [np.zeros((2, 2))] * n
    np.savez(tmp_path / "train" / "pickled.gt.npz", **{**good_gt(n), "depth": obj})  # savez pickles objects
    write_video(tmp_path / "train" / "notzip.mp4", n)
    (tmp_path / "train" / "notzip.gt.npz").write_bytes(b"PK\x03\x04 but not really")
    write_video(tmp_path / "train" / "none.mp4", n)
    cases["pickled"] = ({}, "holds Python objects (a pickle); refused")
    cases["notzip"] = ({}, "not a readable .npz archive")
    cases["none"] = ({}, "no ground-truth geometry sidecar")

    src = VideosSource(tmp_path)
    eps = by_id(src.episodes("train"))
    for name, (_, fragment) in cases.items():
        assert eps[name].quarantine is None  # the listing never opens the npz
        with pytest.raises(Quarantine) as err:
            src.load_gt_geometry(eps[name])
        assert fragment in err.value.reason, (name, err.value.reason)
        if name != "none":
            assert f"train/{name}.gt.npz" in err.value.reason


def test_gt_depth_is_streamed_row_by_row(tmp_path, monkeypatch):
    """Only sampled depth frames are materialised: no array as large as the whole depth is built."""
    n, h, w = 200, 40, 50
    write_video(tmp_path / "train" / "v.mp4", n)
    gt = good_gt(n, h, w)
    save_gt(tmp_path / "train" / "v.gt.npz", **gt)
    src = VideosSource(tmp_path, num_frames=3)
    (ep,) = src.episodes("train")
    biggest = [0]
    real = np.frombuffer

    def spy(buf, dtype=float, *a, **k):
        biggest[0] = max(biggest[0], len(buf))
        return real(buf, dtype, *a, **k)

    monkeypatch.setattr(np, "frombuffer", spy)
    out = src.load_gt_geometry(ep)
    assert biggest[0] <= h * w * 4 * 2 and biggest[0] < gt["depth"].nbytes
    np.testing.assert_array_equal(out["depth"], gt["depth"][[0, 99, 199]])


# ------------------------------------------------------------------------------ unsafe paths


def test_paths_escaping_the_root_are_refused(tmp_path):
    outside = tmp_path / "outside"
    write_video(outside / "o.mp4", 5)
    write_frames(outside / "frames", ["0.png", "1.png"])
    (outside / "meta.json").write_text("{}")
    root = tmp_path / "data"
    split = root / "train"
    split.mkdir(parents=True)
    os.symlink(outside / "o.mp4", split / "linked.mp4")
    os.symlink(outside / "frames", split / "linkeddir")
    write_frames(split / "partly", ["0.png"])
    os.symlink(outside / "frames" / "1.png", split / "partly" / "1.png")
    write_video(split / "withmeta.mp4", 3)
    os.symlink(outside / "meta.json", split / "withmeta.json")
    # links that stay inside the root are fine, and a loop back to an ancestor does not hang
    write_video(root / "shared" / "s.mp4", 4)
    os.symlink(root / "shared", split / "shared")
    os.symlink(split, split / "loop")

    src = VideosSource(root)
    eps = by_id(src.episodes("train"))
    q = quarantines(eps)
    assert set(eps) == {"linked", "linkeddir", "partly", "withmeta", "shared/s"}
    for eid in ("linked", "linkeddir", "partly", "withmeta"):
        assert "outside the dataset root" in q[eid], (eid, q[eid])
        assert eps[eid].files == ()
    assert q["shared/s"] is None and eps["shared/s"].record["media"] == "train/shared/s.mp4"
    assert eps["shared/s"].files == ((root / "shared" / "s.mp4").resolve(),)


def test_read_frames_resolves_overridden_frames_safely(tmp_path):
    outside = write_frames(tmp_path / "outside", ["9.png"])
    root = tmp_path / "data"
    write_frames(root / "train" / "f", ["0.png", "1.png", "2.png"])
    src = VideosSource(root, num_frames=2)  # samples 0 and 2 only
    (ep,) = src.episodes("train")
    (root / "train" / "f" / "1.png").unlink()
    os.symlink(outside / "9.png", root / "train" / "f" / "1.png")
    with pytest.raises(Quarantine, match="outside the dataset root"):
        src.read_frames(ep, indices=[1])


# ------------------------------------------------------------------------------ options, registry


def test_options_are_validated_by_name(tmp_path):
    for kwargs, name in [({"num_frames": 0}, "num_frames"), ({"num_frames": "8"}, "num_frames"),
                         ({"min_frames": 0}, "min_frames"), ({"min_frames": True}, "min_frames"),
                         ({"split_dir": ""}, "split_dir"), ({"split_dir": "{split}/{cam}"}, "split_dir"),
                         ({"split_list": "{x}.txt"}, "split_list"), ({"split_list": 3}, "split_list")]:
        with pytest.raises(ConfigError, match=f"^videos.options(: '|.){name}"):
            VideosSource(tmp_path, **kwargs)
    with pytest.raises(ConfigError, match=r"unknown field 'frames' \(valid: allow_outside_root, max_image_pixels, min_frames, num_frames, split_dir, split_list\)"):
        make_source("videos", tmp_path, frames=8)


def test_registered_and_lazy():
    assert SOURCES["videos"] == "navcache.pipeline.sources.videos:VideosSource"
    src = make_source("videos", Path("/nonexistent"), num_frames=16)
    assert isinstance(src, VideosSource) and src.kind == "videos" and src.num_frames == 16
