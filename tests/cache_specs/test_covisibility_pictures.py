"""The seed's per-video outputs (``cache_specs.covisibility_pictures``): names, exact round trips,
pictures read back by sampling pixels where the layout says the mass is, bad input, atomic writes."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from navcache.cache_specs.covisibility_pictures import (
    BAR_RGB, BEHIND_RGB, GAUGE_RGB, heatmaps_layout, keyframe_layout, output_names, write_episode_outputs,
)
from navcache.cache_specs.layout import TMP_PREFIX, private_name
from navcache.cache_specs.specs.covisibility import RING

G, K = 4, 3
C = G * G + len(RING)
GREY = 128  # every frame is plain grey, so only the overlay makes pixels differ
DIMMED = 35 + 0.5 * GREY  # how an empty cell shows A's grey image
PAIRS = np.array([(a, b) for a in range(K) for b in range(K) if a != b])  # 6 pairs
HOT = (1, 2)  # (gy, gx): the cell that holds the target's in-view mass of pair (0, 1)
# pair row -> the ring cell holding all of that pair's target (row 0 = pair (0, 1) is in view)
RING_OF_ROW = {i + 1: name for i, name in enumerate(RING)}


def _target() -> np.ndarray:
    t = np.zeros((len(PAIRS), C), np.float32)
    t[0, HOT[0] * G + HOT[1]] = 1.0
    for row, name in RING_OF_ROW.items():
        t[row, G * G + RING.index(name)] = 1.0
    return t


def _pred() -> np.ndarray:
    """Pair (0, 1): most mass in the opposite corner cell from the target's; other rows uniform."""
    p = np.full((len(PAIRS), C), 1.0 / C)
    p[0] = 0.002
    p[0, (G - 1) * G + 0] = 1.0 - 0.002 * (C - 1)
    return p


def _inputs(**over) -> dict:
    frames = np.full((K, 24, 32, 3), GREY, np.uint8)
    args = dict(frames=frames, selected_indices=np.array([3, 40, 77]), grid=G, pairs=PAIRS, target=_target(),
                pred=None, pred_upsampled=None,
                geometry_info={"extrinsic": np.tile(np.eye(3, 4, dtype=np.float32), (K, 1, 1)),
                               "intrinsic": np.tile(np.diag([20.0, 20.0, 1.0]).astype(np.float32), (K, 1, 1)),
                               "gain": np.array([0.5, 0.3, 0.2]), "coverage": np.array([0.5, 0.8, 1.0])},
                summary={"video": "v", "keyframes": np.array([3, 40, 77]), "top1": np.float32(0.5)})
    args.update(over)
    return args


def _read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return img[..., ::-1].astype(np.int64)


def _cell_centre(box, gy: int, gx: int) -> tuple[int, int]:
    x0, y0, x1, y1 = box
    return y0 + int((gy + 0.5) * (y1 - y0) / G), x0 + int((gx + 0.5) * (x1 - x0) / G)


def _centre(box) -> tuple[int, int]:
    x0, y0, x1, y1 = box
    return (y0 + y1) // 2, (x0 + x1) // 2


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """Prediction and ground truth, written once for the module."""
    out = tmp_path_factory.mktemp("both")
    paths = write_episode_outputs(out, "v", **_inputs(pred=_pred()))
    return out, paths


def test_files_have_the_seed_names_and_nothing_else_is_left(both):
    out, paths = both
    assert set(paths) == {"heatmaps", "heatmap_0", "heatmap_1", "heatmap_2", "selected_indices", "geometry_info", "summary"}
    assert {p.name for p in paths.values()} == {"v_heatmaps.png", "v_heatmap_0.png", "v_heatmap_1.png", "v_heatmap_2.png",
                                                 "v_selected_indices.npy", "v_geometry_info.npz", "v_summary.json"}
    assert sorted(os.listdir(out)) == sorted(p.name for p in paths.values())  # no temporaries
    assert output_names("v", K) == {k: p.name for k, p in paths.items()}


def test_arrays_and_summary_round_trip_exactly(both):
    _, paths = both
    sel = np.load(paths["selected_indices"], allow_pickle=False)
    assert sel.dtype == np.int64 and sel.tolist() == [3, 40, 77]
    info = _inputs()["geometry_info"]
    with np.load(paths["geometry_info"], allow_pickle=False) as z:
        assert set(z.files) == set(info)
        for name, a in info.items():
            assert z[name].dtype == a.dtype
            np.testing.assert_array_equal(z[name], a)
    assert json.loads(paths["summary"].read_text()) == {"video": "v", "keyframes": [3, 40, 77], "top1": 0.5}


def test_grid_picture_is_hot_where_the_mass_is_and_prediction_sits_left_of_truth(both):
    _, paths = both
    img = _read_rgb(paths["heatmaps"])
    lay = heatmaps_layout(K, 24, 32, ("pred", "target"))
    assert img.shape[:2] == (lay.height, lay.width)
    truth, pred = lay.panels[(0, 1, "target")], lay.panels[(0, 1, "pred")]
    assert pred.image[2] < truth.image[0] and pred.image[1] == truth.image[1]  # side by side in one cell
    hot, empty = img[_cell_centre(truth.image, *HOT)], img[_cell_centre(truth.image, 0, 0)]
    assert np.abs(empty - DIMMED).max() <= 2  # no mass: A's image shows through untouched
    assert hot.sum() > empty.sum() + 200 and hot[0] > hot[2] + 60  # bright and warm
    # the prediction's own hot cell is its bottom-left one, not the target's
    p_hot, p_there = img[_cell_centre(pred.image, G - 1, 0)], img[_cell_centre(pred.image, *HOT)]
    assert p_hot.sum() > p_there.sum() + 150 and p_hot.sum() > img[_cell_centre(truth.image, G - 1, 0)].sum() + 150


@pytest.mark.parametrize("row", sorted(RING_OF_ROW))
def test_ring_mass_is_a_bar_on_its_own_side(both, row):
    _, paths = both
    img = _read_rgb(paths["heatmaps"])
    lay = heatmaps_layout(K, 24, 32, ("pred", "target"))
    a, b = PAIRS[row]
    panel = lay.panels[(a, b, "target")]
    name = RING_OF_ROW[row]
    assert tuple(img[_centre(panel.bars[name])]) == (BEHIND_RGB if name == "behind" else BAR_RGB)
    for other in set(RING) - {name}:
        assert tuple(img[_centre(panel.bars[other])]) == GAUGE_RGB, other
    # all of B is out of view: every cell of A's image shows A untouched
    x0, y0, x1, y1 = panel.image
    assert np.abs(img[y0:y1, x0:x1] - DIMMED).max() <= 2


def test_keyframe_picture_shows_each_other_keyframe_and_its_mass(both):
    _, paths = both
    lay = keyframe_layout(K, 24, 32, ("pred", "target"), 0)
    img = _read_rgb(paths["heatmap_0"])
    assert img.shape[:2] == (lay.height, lay.width) and set(lay.thumbs) == {1, 2}
    truth = lay.panels[(1, "target")]
    assert img[_cell_centre(truth.image, *HOT)].sum() > img[_cell_centre(truth.image, 3, 3)].sum() + 200
    # pair (0, 2) is row 1: all of it to the left of A
    assert tuple(img[_centre(lay.panels[(2, "target")].bars["left"])]) == BAR_RGB
    assert tuple(img[_centre(lay.panels[(2, "target")].bars["right"])]) == GAUGE_RGB
    lay2 = keyframe_layout(K, 24, 32, ("pred", "target"), 2)
    assert _read_rgb(paths["heatmap_2"]).shape[:2] == (lay2.height, lay2.width) and set(lay2.thumbs) == {0, 1}


def test_prediction_only_draws_the_upsampled_density(tmp_path):
    """No ground truth: one panel per cell; the upsampled map, not pred's cells, decides where it is hot."""
    pred = np.full((len(PAIRS), C), 1.0 / C)
    up = np.zeros((len(PAIRS), 48, 64), np.float32)
    up[:, 36:, 48:] = 1.0  # the bottom-right quarter of A's image
    paths = write_episode_outputs(tmp_path, "p", **_inputs(target=None, pred=pred, pred_upsampled=up))
    lay = heatmaps_layout(K, 24, 32, ("pred",))
    assert (0, 1, "target") not in lay.panels
    img = _read_rgb(paths["heatmaps"])
    box = lay.panels[(0, 1, "pred")].image
    assert img[_cell_centre(box, G - 1, G - 1)].sum() > img[_cell_centre(box, 0, 0)].sum() + 200
    assert np.abs(img[_cell_centre(box, 0, 0)] - DIMMED).max() <= 2


@pytest.mark.parametrize("over, says", [
    ({"frames": np.zeros((K, 24, 32, 3), np.float32)}, "frames"),
    ({"frames": np.zeros((K, 24, 32), np.uint8)}, "frames"),
    ({"selected_indices": np.arange(K + 1)}, "selected_indices"),
    ({"grid": 0}, "grid"),
    ({"pairs": PAIRS[:, :1]}, "pairs"),
    ({"pairs": np.where(PAIRS == 2, 5, PAIRS)}, "pairs"),
    ({"pairs": np.array([[0, 0]] + PAIRS[1:].tolist())}, "pairs"),
    ({"pairs": np.array(PAIRS.tolist()[:-1] + [[0, 1]])}, "pairs"),
    ({"target": np.zeros((len(PAIRS), C - 1), np.float32)}, "target"),
    ({"target": -_target()}, "target"),
    ({"pred": np.zeros((len(PAIRS) - 1, C))}, "pred"),
    ({"target": None}, "both None"),
    ({"pred_upsampled": np.ones((len(PAIRS), 8, 8), np.float32)}, "pred_upsampled"),
    ({"pred": _pred(), "pred_upsampled": np.ones((len(PAIRS), 8), np.float32)}, "pred_upsampled"),
    ({"geometry_info": {"extrinsic": np.zeros((K, 4, 4))}}, "geometry_info['extrinsic']"),
    ({"geometry_info": {"names": np.array([{"a": 1}], dtype=object)}}, "geometry_info['names']"),
    ({"geometry_info": {3: np.zeros(2)}}, "geometry_info keys"),
    ({"summary": {"kl": float("nan")}}, "summary"),
    ({"summary": {"when": object()}}, "summary"),
])
def test_bad_input_is_rejected_by_name_and_writes_nothing(tmp_path, over, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        write_episode_outputs(tmp_path / "out", "v", **_inputs(**over))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("video", ["", "a/b", "..", 3])
def test_bad_video_name_is_rejected(tmp_path, video):
    with pytest.raises(ValueError, match="video"):
        write_episode_outputs(tmp_path, video, **_inputs())


def test_a_killed_writers_temporaries_are_swept_and_a_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    stale = tmp_path / private_name(TMP_PREFIX, "v_heatmaps.png").replace(f"-{os.getpid()}-", f"-{pid}-")
    live = tmp_path / private_name(TMP_PREFIX, "v_summary.json")  # this process: alive
    for p in (stale, live):
        p.write_bytes(b"half a file")
        os.utime(p, (time.time() - 7200, time.time() - 7200))
    paths = write_episode_outputs(tmp_path, "v", **_inputs())
    assert not stale.exists() and live.exists()
    assert sorted(os.listdir(tmp_path)) == sorted([live.name] + [p.name for p in paths.values()])


def test_importing_the_module_imports_neither_matplotlib_nor_cv2():
    code = "import sys, navcache.cache_specs.covisibility_pictures; sys.exit('matplotlib' in sys.modules or 'cv2' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
