"""Memory follows the work, not the input: a huge JPEG is refused above ``max_image_pixels`` (with
its size in the reason) or decoded DCT-reduced towards the encoder's input size, and every
normal-sized frame decodes byte for byte as before.

The huge image (12000x12000, 144 Mpx, a few MB as a JPEG of flat colour) is generated into
tmp_path; the peak memory is the ``VmHWM`` an ``extract`` subprocess reports for itself. That
subprocess runs under a 3 GiB data limit (RLIMIT_DATA), so code that decodes the full
image fails inside it instead of taking 15 GB from a shared machine.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from navcache.pipeline.decode import image_header_size, read_image, read_jpegs, reduction
from navcache.pipeline.errors import Quarantine
from navcache.pipeline.sources.navila import NavilaSource

HUGE = 12000
PEAK_LIMIT = 1.5 * 2**30  # bytes


def old_decode(path: Path) -> np.ndarray:
    """The decoding ``read_image`` did before reduced decoding existed (the reference)."""
    bgr = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def noise_jpeg(path: Path, w: int, h: int, seed: int = 0, **pil) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=90, **pil)
    return path


def huge_jpeg(path: Path) -> Path:
    """12000x12000 in a few MB: flat blocks with a gradient band, written by PIL in strips' worth of memory."""
    from PIL import Image

    img = Image.new("RGB", (HUGE, HUGE), (90, 140, 200))
    img.paste((200, 60, 30), (0, 0, HUGE, HUGE // 3))
    img.save(path, quality=85)
    del img
    return path


def one_frame_navila(root: Path, image: Path) -> Path:
    """A NaVILA dataset of one 1-frame record whose frame is ``image``."""
    (root / "train" / "ep").mkdir(parents=True)
    image.rename(root / "train" / "ep" / "f0.jpg")
    (root / "annotations_train.json").write_text(json.dumps([{"video_id": "huge", "frames": ["ep/f0.jpg"], "q": "q", "a": "a"}]))
    return root


# ---------------------------------------------------------------------------------- headers


@pytest.mark.parametrize("kind", ["baseline", "progressive", "exif", "png"])
def test_header_size_is_what_pil_reads(tmp_path, kind):
    from PIL import Image

    w, h = 173, 91
    if kind == "png":
        path = tmp_path / "a.png"
        Image.new("RGB", (w, h), (1, 2, 3)).save(path)
    elif kind == "exif":
        exif = Image.Exif()
        exif[0x010E] = "x" * 5000  # a long APP1 segment before the frame header
        path = noise_jpeg(tmp_path / "a.jpg", w, h, exif=exif.tobytes())
    else:
        path = noise_jpeg(tmp_path / "a.jpg", w, h, progressive=kind == "progressive")
    assert image_header_size(path.read_bytes()) == Image.open(path).size == (w, h)
    assert image_header_size(b"GIF89a" + bytes(20)) is None


def test_only_huge_images_are_reduced():
    assert reduction((HUGE, HUGE), (224, 224)) == 8
    assert reduction((6000, 4000), (224, 224)) == 8  # 24 Mpx: 750x500 still covers 224x224
    assert reduction((6000, 4000), (1024, 1024)) == 2
    assert reduction((6000, 4000), None) == 1
    for size in [(128, 128), (640, 480), (1920, 1080), (3840, 2160), (4000, 4000)]:
        assert reduction(size, (64, 64)) == 1, size  # up to 16 Mpx: decoded as before


# ------------------------------------------------------------------------------ same pixels


def test_normal_frames_decode_bit_identically(tmp_path):
    """Frames up to 4K decode exactly as before with a target size, however much larger they are."""
    for w, h in [(128, 128), (640, 480), (1920, 1080), (3840, 2160)]:
        p = noise_jpeg(tmp_path / f"{w}.jpg", w, h)
        got = read_jpegs([p, p], resize_to=(64, 64))
        assert got.shape == (2, h, w, 3)
        assert np.array_equal(got[0], old_decode(p)) and np.array_equal(got[1], old_decode(p))


def test_demo_frames_read_through_the_source_are_unchanged(tmp_path):
    from navcache.pipeline.demo import generate_demo

    info = generate_demo(tmp_path / "demo", scale=0.1, workers=1)
    src = NavilaSource(info.navila_root)
    for ep in src.episodes("train")[:5]:
        reduced = src.read_frames(ep, resize_to=(224, 224))
        for row, path in zip(reduced.pixels[~reduced.padded], ep.files):
            assert np.array_equal(row, old_decode(path)), path


def test_huge_jpeg_is_reduced_and_keeps_its_colours(tmp_path):
    p = huge_jpeg(tmp_path / "h.jpg")
    img = read_image(p, resize_to=(224, 224), max_pixels=None)
    assert img.shape == (HUGE // 8, HUGE // 8, 3)
    assert np.abs(img[10, 10].astype(int) - (200, 60, 30)).max() <= 3
    assert np.abs(img[-10, -10].astype(int) - (90, 140, 200)).max() <= 3


def test_huge_png_is_shrunk_and_normal_png_is_not(tmp_path):
    from PIL import Image

    Image.new("RGB", (6000, 4000), (10, 200, 30)).save(tmp_path / "big.png")
    img = read_image(tmp_path / "big.png", resize_to=(224, 224))
    assert img.shape == (500, 750, 3) and (img == (10, 200, 30)).all()
    noise = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "small.png")
    assert np.array_equal(read_image(tmp_path / "small.png", resize_to=(64, 64)), noise)


# ---------------------------------------------------------------------------------- refusals


def test_above_the_limit_is_quarantined_with_its_size_before_decoding(tmp_path):
    p = noise_jpeg(tmp_path / "a.jpg", 400, 300)
    with pytest.raises(Quarantine, match=r"a\.jpg is 400x300 \(0\.1 Mpx\), above the limit of 0\.1 Mpx.*max_image_pixels"):
        read_image(p, max_pixels=100_000)
    assert read_image(p, max_pixels=120_000).shape == (300, 400, 3)
    # a header claiming more pixels than the file could hold is refused by its header alone
    raw = bytearray(p.read_bytes())
    i = raw.index(b"\xff\xc0")
    raw[i + 5 : i + 9] = (50000).to_bytes(2, "big") + (50000).to_bytes(2, "big")
    (tmp_path / "bomb.jpg").write_bytes(bytes(raw))
    with pytest.raises(Quarantine, match="50000x50000 \\(2500.0 Mpx\\)"):
        read_image(tmp_path / "bomb.jpg")


def test_source_option_sets_the_limit(tmp_path):
    from navcache.pipeline.errors import ConfigError

    root = one_frame_navila(tmp_path / "nav", noise_jpeg(tmp_path / "x.jpg", 400, 300))
    (ep,) = NavilaSource(root).episodes("train")
    assert NavilaSource(root).read_frames(ep).pixels.shape == (8, 300, 400, 3)
    with pytest.raises(Quarantine, match="400x300"):
        NavilaSource(root, max_image_pixels=1000).read_frames(ep)
    assert NavilaSource(root, max_image_pixels=None).read_frames(ep).pixels.shape == (8, 300, 400, 3)
    with pytest.raises(ConfigError, match="max_image_pixels"):
        NavilaSource(root, max_image_pixels=0)


# ------------------------------------------------------------------------ the measured peak

_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    from navcache.pipeline.config import load_config
    from navcache.pipeline.runner import ExtractOptions, extract
    s = extract(load_config(sys.argv[1]), ExtractOptions("train", only="frame-features"))
    # VmHWM is this process image's own high-water mark: ru_maxrss would start from the RSS of the
    # process that forked us (Linux carries it over fork and execve), i.e. pytest's, not ours
    peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    (st,) = s.stages
    print(json.dumps({"peak_kib": peak, "errors": s.errors, "ok": st.episodes_ok, "quarantined": st.quarantined}))
    """
)


@pytest.fixture(scope="module")
def huge_dataset(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("huge")
    return one_frame_navila(tmp / "nav", huge_jpeg(tmp / "h.jpg"))


def run_extract(tmp: Path, data: Path, model: Path, options: dict) -> dict:
    cfg = {"cache_root": str(tmp / "cache"), "datasets": {"nav": {"source": "navila", "root": str(data), "splits": ["train"],
           "stages": ["frame-features"], "options": options}},
           "stages": {"frame-features": {"encoder": {"model": str(model), "device": "cpu"}, "batch_size": 8}}}
    (tmp / "navcache.yaml").write_text(yaml.safe_dump(cfg))
    p = subprocess.run([sys.executable, "-c", _CHILD, str(tmp / "navcache.yaml"), str(3 * 2**30)],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_huge_jpeg_above_the_default_limit_is_quarantined_with_its_size(tmp_path, huge_dataset, tiny_model):
    out = run_extract(tmp_path, huge_dataset, tiny_model, {})
    assert not out["errors"] and out["ok"] == 0
    (q,) = out["quarantined"]
    assert q["episode_id"] == "huge" and "12000x12000 (144.0 Mpx)" in q["reason"] and "64 Mpx" in q["reason"], q
    assert out["peak_kib"] * 1024 < PEAK_LIMIT, out


def test_huge_jpeg_allowed_is_built_with_bounded_memory(tmp_path, huge_dataset, tiny_model):
    from navcache.cache_specs import open_cache

    out = run_extract(tmp_path, huge_dataset, tiny_model, {"max_image_pixels": 200_000_000})
    assert not out["errors"] and out["ok"] == 1 and not out["quarantined"], out
    assert out["peak_kib"] * 1024 < PEAK_LIMIT, out
    c = open_cache(tmp_path / "cache/nav/train/frame_features")
    assert c.episodes == ["huge"] and np.isfinite(c["huge"]["cls"].astype(np.float32)).all()
