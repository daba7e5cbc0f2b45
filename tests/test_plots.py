"""pipeline/plots.py and heads/plots.py: the pictures hold what they claim, pixel-checked where possible."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from navcache.heads.plots import LOSS_PANEL, confusion_matrix, curve_panels, load_metrics, plot_confusion, training_curves
from navcache.pipeline.plots import (HIGHLIGHT_RGB, MAX_DRAWN_POINTS, contact_sheet, save_figure, sheet_layout,
                            subsample_points, topdown)

REPO = Path(__file__).resolve().parents[1]


def _rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"{path} does not decode as an image"
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _near_highlight(img: np.ndarray, tol: int = 40) -> np.ndarray:
    """bool [H, W]: pixels close to the keyframe colour (antialiased text and markers included)."""
    return (np.abs(img.astype(int) - HIGHLIGHT_RGB) <= tol).all(-1)


def _flat_frames(s: int, h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """s single-colour frames uint8 [s, h, w, 3], colours well away from the highlight colour."""
    colours = np.random.default_rng(seed).integers(0, 120, (s, 3)).astype(np.uint8)  # dark: never magenta
    return np.broadcast_to(colours[:, None, None, :], (s, h, w, 3)).copy(), colours


def _only_expected_files(folder: Path, names: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == names  # no .tmp leftovers from the atomic writes


# ----------------------------------------------------------------------------------------------
# contact sheet


def test_contact_sheet_borders_mark_exactly_the_keyframes(tmp_path):
    frames, colours = _flat_frames(11, 48, 64)
    keys, order = np.array([0, 4, 10]), np.array([1, 2, 0])
    out = contact_sheet(frames, np.arange(11) * 5, keys, order, [0.5, 0.2, 0.1], [0.5, 0.7, 0.8],
                        np.array([0.3, 0.5, 0.6]), tmp_path / "sheet.png", title="episode 3")
    img = _rgb(out)
    lay = sheet_layout(11, 48, 64, title=True)
    assert img.shape == (lay.height, lay.width, 3)
    b = lay.border
    for i, (x0, y0, x1, y1) in enumerate(lay.boxes):
        box = img[y0:y1, x0:x1]
        ring = np.ones(box.shape[:2], bool)
        ring[b:-b, b:-b] = False
        if i in keys:
            assert (box[ring] == HIGHLIGHT_RGB).all(), f"keyframe {i} lacks a full highlight border"
        else:
            assert not (box[ring] == HIGHLIGHT_RGB).all(-1).any(), f"frame {i} has highlight pixels in its border"
        # the thumbnail sits 1:1 inside the border: flat frames stay exactly their colour
        assert (box[b:-b, b:-b] == colours[i]).all()
        # keyframe labels ("<frame> #<pick>") are drawn in the highlight colour, others are not
        lx, ly = lay.labels[i]
        band = img[ly - 6 : ly + 7, lx - 28 : lx + 29]
        assert _near_highlight(band).any() == (i in keys)


@pytest.mark.parametrize("s", [1, 2, 7, 128])
def test_contact_sheet_sizes_and_no_keyframes(tmp_path, s):
    frames, _ = _flat_frames(s, 96, 128, seed=s)
    index = np.arange(s) - 1  # a front-padding row (-1) is labelled "pad"
    out = contact_sheet(frames, index, [], [], [], [], None, tmp_path / "sheet.png")
    img = _rgb(out)
    lay = sheet_layout(s, 96, 128)
    assert img.shape == (lay.height, lay.width, 3)
    assert lay.width < 2500 and lay.rows * lay.cols >= s
    grid = img[lay.grid[1] : lay.grid[3], lay.grid[0] : lay.grid[2]]
    assert not (grid == HIGHLIGHT_RGB).all(-1).any()  # k = 0: no border anywhere
    _only_expected_files(tmp_path, {"sheet.png"})


def test_contact_sheet_downscales_large_frames_to_fit():
    lay = sheet_layout(128, 1080, 1920)
    assert lay.width < 2500 and lay.thumb_w < 1920
    assert abs(lay.thumb_w / lay.thumb_h - 1920 / 1080) < 0.05  # aspect kept
    boxes = lay.boxes
    # no two thumbnails overlap: every box is left of or above every later one in its grid cell order
    for i in range(1, len(boxes)):
        prev, cur = boxes[i - 1], boxes[i]
        assert cur[0] >= prev[2] or cur[1] >= prev[3]


def test_contact_sheet_rejects_inconsistent_keyframes(tmp_path):
    frames, _ = _flat_frames(4, 8, 8)
    with pytest.raises(ValueError, match="pick_order"):
        contact_sheet(frames, np.arange(4), [1, 2], [1, 1], [0, 0], [0, 0], None, tmp_path / "x.png")
    with pytest.raises(ValueError, match="keyframe_positions"):
        contact_sheet(frames, np.arange(4), [4], [0], [0], [0], None, tmp_path / "x.png")
    with pytest.raises(ValueError, match="coverage"):
        contact_sheet(frames, np.arange(4), [1], [0], [0.1], [], None, tmp_path / "x.png")
    with pytest.raises(ValueError, match="uint8"):
        contact_sheet(frames.astype(np.float32), np.arange(4), [], [], [], [], None, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------
# top-down map


def _orbit(s: int = 40, n: int = 120_000):
    t = np.linspace(0, np.pi, s)
    centres = np.stack([3 * np.sin(t), np.zeros(s), 3 * t], 1)
    axes = np.stack([np.cos(t), np.full(s, 0.3), np.ones(s)], 1)
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    points = np.random.default_rng(0).normal(size=(n, 3)) * [4, 1, 6] + [0, 0, 5]
    return centres, axes, points


def test_topdown_marks_keyframes_only_when_there_are_some(tmp_path):
    centres, axes, points = _orbit()
    with_k = _rgb(topdown(centres, axes, points, [0, 20, 39], tmp_path / "k.png", title="ep"))
    without = _rgb(topdown(centres, axes, points, [], tmp_path / "none.png"))
    assert with_k.shape == without.shape == (900, 900, 3)
    assert _near_highlight(with_k).sum() > 100
    assert _near_highlight(without).sum() == 0
    side = _rgb(topdown(centres, axes, points[:0], [5], tmp_path / "side.png", plane=(0, 1)))  # no points at all
    assert side.shape == (900, 900, 3)
    _only_expected_files(tmp_path, {"k.png", "none.png", "side.png"})


def test_topdown_rejects_bad_plane_and_positions(tmp_path):
    centres, axes, points = _orbit(5, 10)
    with pytest.raises(ValueError, match="plane"):
        topdown(centres, axes, points, [], tmp_path / "x.png", plane=(2, 2))
    with pytest.raises(ValueError, match="keyframe_positions"):
        topdown(centres, axes, points, [5], tmp_path / "x.png")


def test_subsample_points_is_deterministic_bounded_and_a_subset():
    pts = np.random.default_rng(1).normal(size=(MAX_DRAWN_POINTS * 3, 3))
    a, b = subsample_points(pts), subsample_points(pts)
    assert len(a) == MAX_DRAWN_POINTS and np.array_equal(a, b)
    rows = {r.tobytes() for r in pts}
    assert all(r.tobytes() in rows for r in a[:1000])
    assert np.array_equal(subsample_points(pts[:10]), pts[:10])  # under the limit: everything, in order


# ----------------------------------------------------------------------------------------------
# training curves


def _loop_records(epochs: int = 5) -> tuple[list[dict], list[dict]]:
    """Records shaped like heads/train_loop.py's: eval metrics, running_* stats, time_s, counts."""
    train = [{"epoch": e, "loss": 1 / e, "loss_risk": 0.5 / e, "risk_accuracy": 0.5 + e / 20, "n": 96, "n_risk_high": 7,
              "base_majority_risk_accuracy": 0.55, "running_loss": 1.1 / e, "running_grad_norm": 2.0 / e, "time_s": 0.01,
              "head": "sim", "best": True}
             for e in range(1, epochs + 1)]
    val = [{"epoch": e, "loss": 1.2 / e, "loss_risk": 0.6 / e, "risk_accuracy": 0.45 + e / 20, "n": 40,
            "base_majority_risk_accuracy": 0.5, "acc_next_yaw": 0.4, "base_majority_next_yaw": 0.58, "base_repeat_next_yaw": 0.3}
           for e in range(1, epochs + 1)]
    return train, val


def test_curve_panels_group_losses_and_skip_non_numeric_fields():
    train, val = _loop_records()
    panels = curve_panels(train, val)
    assert next(iter(panels)) == LOSS_PANEL
    assert set(panels[LOSS_PANEL]) == {("train", "loss"), ("train", "loss_risk"), ("train", "running_loss"),
                                       ("val", "loss"), ("val", "loss_risk")}
    # a baseline is a line in its metric's panel, never a panel of its own
    assert set(panels["risk_accuracy"]) == {("train", "risk_accuracy"), ("val", "risk_accuracy"),
                                            ("train", "base_majority_risk_accuracy"), ("val", "base_majority_risk_accuracy")}
    assert set(panels["acc_next_yaw"]) == {("val", "acc_next_yaw"), ("val", "base_majority_next_yaw"), ("val", "base_repeat_next_yaw")}
    assert not [p for p in panels if p.startswith("base_")]
    assert set(panels) == {LOSS_PANEL, "risk_accuracy", "acc_next_yaw", "grad_norm", "time_s"}
    assert panels["grad_norm"] == [("train", "running_grad_norm")]
    drawn = {k for series in panels.values() for _, k in series}
    assert not drawn & {"epoch", "head", "best", "n", "n_risk_high"}  # strings, bools, counts
    assert set(curve_panels(train, val, keys=["loss"])) == {LOSS_PANEL}
    with pytest.raises(ValueError, match="no numeric metric"):
        curve_panels(train, val, keys=["nope"])
    assert curve_panels([], [], keys=["loss"]) == {}


def test_training_curves_tolerate_missing_val_blank_and_torn_lines(tmp_path):
    train, val = _loop_records()
    tpath, vpath = tmp_path / "train_metrics.jsonl", tmp_path / "val_metrics.jsonl"
    tpath.write_text("\n".join(json.dumps(r) + "\n" for r in train) + '{"epoch": 6, "lo')  # blank lines + torn tail
    assert load_metrics(tpath)[0] == train and load_metrics(tpath)[1] == 1
    a = _rgb(training_curves(tpath, tmp_path / "missing.jsonl", tmp_path / "a.png"))
    vpath.write_text("".join(json.dumps(r) + "\n" for r in val))
    b = _rgb(training_curves(tpath, vpath, tmp_path / "b.png", keys=["loss", "risk_accuracy"]))
    assert a.shape[0] > 200 and a.shape[1] > 300 and b.shape[2] == 3
    (tmp_path / "empty.jsonl").write_text("\n\n")
    c = _rgb(training_curves(tmp_path / "empty.jsonl", tmp_path / "missing.jsonl", tmp_path / "c.png"))
    assert c.shape[0] > 100
    with pytest.raises(FileNotFoundError):
        training_curves(tmp_path / "missing.jsonl", vpath, tmp_path / "d.png")
    _only_expected_files(tmp_path, {"train_metrics.jsonl", "val_metrics.jsonl", "empty.jsonl", "a.png", "b.png", "c.png"})


def test_training_curves_read_real_train_loop_output(tmp_path):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    from navcache.heads.train_loop import LoopConfig, run_loop

    class Tiny:
        def __init__(self):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(48, 4, generator=g)
            y = (x[:, 0] > 0).long()
            self.train_arrays, self.val_arrays = {"x": x[:32], "y": y[:32]}, {"x": x[32:], "y": y[32:]}
            self.model = torch.nn.Linear(4, 2)

        def loss(self, model, batch):
            return F.cross_entropy(model(batch["x"]), batch["y"]), {}

        def evaluate(self, model, arrays):
            logits = model(arrays["x"])
            return {"loss": float(F.cross_entropy(logits, arrays["y"])), "acc": float((logits.argmax(-1) == arrays["y"]).float().mean())}

        def select(self, m):
            return (m["acc"],)

    run_loop(Tiny(), LoopConfig(epochs=3, batch_size=16, out_dir=str(tmp_path / "run"), device="cpu"))
    metrics = tmp_path / "run" / "metrics"
    panels = curve_panels(load_metrics(metrics / "train_metrics.jsonl")[0], load_metrics(metrics / "val_metrics.jsonl")[0])
    assert {("train", "loss"), ("val", "loss"), ("train", "running_loss")} <= set(panels[LOSS_PANEL])
    assert set(panels["acc"]) == {("train", "acc"), ("val", "acc")}
    assert _rgb(training_curves(metrics / "train_metrics.jsonl", metrics / "val_metrics.jsonl", tmp_path / "curves.png")).ndim == 3


# ----------------------------------------------------------------------------------------------
# confusion matrices


def test_confusion_matrix_matches_hand_count():
    y_true = np.array([0, 0, 1, 2, 2, 2, 1])
    y_pred = np.array([0, 1, 1, 2, 0, 2, 1])
    m = confusion_matrix(y_true, y_pred, 3)
    assert m.dtype == np.int64 and m.shape == (3, 3)
    assert m.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert m.sum() == len(y_true)
    assert confusion_matrix(np.array([], int), np.array([], int), 2).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(ValueError, match="0..2"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="length"):
        confusion_matrix(np.array([0, 1]), np.array([0]), 3)


def test_plot_confusion_with_an_empty_row(tmp_path):
    m = confusion_matrix(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0]), 3)  # class 2 never occurs
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero on the empty row
        out = plot_confusion(m, ["stop", "forward", "turn"], tmp_path / "conf.png", title="action")
    img = _rgb(out)
    assert img.shape[0] >= 400 and img.shape[1] >= 400
    with pytest.raises(ValueError, match="class names"):
        plot_confusion(m, ["a", "b"], tmp_path / "bad.png")
    _only_expected_files(tmp_path, {"conf.png"})


# ----------------------------------------------------------------------------------------------
# writing


def test_failed_write_keeps_the_old_png_and_leaves_no_temp(tmp_path):
    out = tmp_path / "plot.png"
    out.write_bytes(b"old")

    class Broken:
        dpi = 100

        def get_facecolor(self):
            return "white"

        def savefig(self, f, **kw):
            f.write(b"half a png")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(Broken(), out)
    assert out.read_bytes() == b"old"
    _only_expected_files(tmp_path, {"plot.png"})


def test_importing_the_plot_modules_does_not_import_matplotlib():
    code = "import sys, heads.plots, pipeline.plots; sys.exit('matplotlib' in sys.modules or 'cv2' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False).returncode == 0
