"""Damaged mp4s, before and after strict decoding, and what strict decoding costs (issue 18 part 1).

Fuzz: the 160-file damaged set of ``tests/pipeline/mp4_damage.py`` built from three demo tours;
each file is read three times by both paths, sampling 16 uniform frames as the videos source does:

  before  the pre-issue path: box tiling check, then decord (``VideoReader`` + ``get_batch``);
  after   ``pipeline.decode.read_video_sampled``: sample-table check + strict PyAV decode.

Per damage kind it prints how many files were quarantined, built identical to the undamaged clip
(the damage did not touch the sampled frames' pixels), built *silently wrong* (frames or count
differ, no error), and unstable (outcome or pixels differ between the three runs).

Speed: episodes/s reading 16 frames of each demo clip (the pipeline's read), and frames/s decoding every frame of the three demo clips (mpeg4 128x128) and of a generated
640x480 H.264 clip (libx264, 300 frames), decord (1 thread) vs PyAV strict (1 thread) vs PyAV with
FFmpeg's default threading, side by side in one process; the ratio strict / decord is the cost.

    python -m bench.video_fuzz
"""
from __future__ import annotations

import hashlib
import time
from collections import Counter, defaultdict
from pathlib import Path

import av
import numpy as np
from decord import VideoReader, cpu

from bench.common import OUT, record
from navcache.pipeline.decode import check_file, check_iso_bmff_complete, read_video_sampled
from navcache.pipeline.demo.video_writer import write_tour
from navcache.pipeline.errors import Quarantine
from navcache.pipeline.sampling import uniform_indices
from tests.pipeline.mp4_damage import CODEC_KINDS, COUNTS, damaged_set

RUNS, SAMPLE = 3, 16


def decord_sampled(path: Path) -> tuple[np.ndarray, int]:
    """The reading path before this issue (pipeline/decode.py at 55a09b2), minus its error wording."""
    size = check_file(path, "video")
    check_iso_bmff_complete(path, size)
    try:
        vr = VideoReader(str(path), ctx=cpu(0), num_threads=1)
        n = len(vr)
        if n <= 0:
            raise Quarantine("no frames")
        return vr.get_batch(uniform_indices(n, SAMPLE).tolist()).asnumpy(), n
    except Exception as e:  # decord raises DECORDError / RuntimeError
        raise Quarantine(str(e)[-200:]) from None


def strict_sampled(path: Path) -> tuple[np.ndarray, int]:
    return read_video_sampled(path, lambda n: uniform_indices(n, SAMPLE).tolist())


def outcome(read, path: Path) -> tuple[str, str]:
    """("quarantined", "") or ("built", hash of n and pixels)."""
    try:
        pixels, n = read(path)
    except Quarantine:
        return "quarantined", ""
    return "built", hashlib.sha256(np.int64(n).tobytes() + pixels.tobytes()).hexdigest()


def fuzz(clips: list[Path], out: Path) -> dict:
    readers = {"before": decord_sampled, "after": strict_sampled}
    originals = {name: {c: outcome(r, c) for c in clips} for name, r in readers.items()}
    table: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for kind, path, clip in damaged_set(clips, out):
        for name, read in readers.items():
            runs = [outcome(read, path) for _ in range(RUNS)]
            if len(set(runs)) > 1:
                verdict = "unstable"
            elif runs[0][0] == "quarantined":
                verdict = "quarantined"
            else:
                verdict = "identical" if runs[0] == originals[name][clip] else "silent"
            table[kind][name][verdict] += 1
    return {k: {n: dict(c) for n, c in v.items()} for k, v in table.items()}


def h264_clip(path: Path, n: int = 300) -> Path:
    """640x480 H.264 (libx264, yuv420p, GOP 30), moving gradients so motion prediction has work."""
    yy, xx = np.mgrid[0:480, 0:640]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 640, 480, "yuv420p"
        s.options = {"g": "30", "preset": "medium"}
        for k in range(n):
            img = np.stack([(xx + 4 * k) % 256, (yy + 2 * k) % 256, ((xx + yy) // 2 + k) % 256], -1).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def fps_decord(path: Path) -> tuple[int, float]:
    t = time.perf_counter()
    vr = VideoReader(str(path), ctx=cpu(0), num_threads=1)
    n = len(vr)
    for i in range(0, n, 32):
        vr.get_batch(list(range(i, min(i + 32, n)))).asnumpy()
    return n, time.perf_counter() - t


def fps_strict(path: Path) -> tuple[int, float]:
    t = time.perf_counter()
    pixels, n = read_video_sampled(path, lambda n: range(n))
    return n, time.perf_counter() - t


def fps_pyav_threaded(path: Path) -> tuple[int, float]:
    """PyAV with FFmpeg's default (automatic) threading and concealment: the speed strict gives up."""
    t = time.perf_counter()
    n = 0
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for frame in c.decode(s):
            frame.to_ndarray(format="rgb24")
            n += 1
    return n, time.perf_counter() - t


def speed(clips: list[Path], reps: int = 3) -> dict:
    res = {}
    for label, files in {"demo mpeg4 128x128": clips, "H.264 640x480": [h264_clip(OUT / "video_fuzz" / "h264_640x480.mp4")]}.items():
        row, frames = {}, sum(_count(f) for f in files)
        for name, fn in {"decord": fps_decord, "pyav_strict": fps_strict, "pyav_threaded": fps_pyav_threaded}.items():
            for f in files:
                assert fn(f)[0] == _count(f), (name, f)  # each path really decoded every frame
            best = min(sum(fn(f)[1] for f in files) for _ in range(reps))  # best of reps: least disturbed by load
            row[name] = round(frames / best, 1)
        row["strict/decord"] = round(row["pyav_strict"] / row["decord"], 3)
        res[label] = row
    return res


def sampled_speed(clips: list[Path], reps: int = 5) -> dict:
    """Episodes/s reading 16 uniform frames per clip, as the videos source does: the old path
    (decord seeks to keyframes) vs strict (decodes the whole stream)."""
    row = {}
    for name, fn in {"decord": decord_sampled, "pyav_strict": strict_sampled}.items():
        best = min(_timed(lambda: [fn(c) for c in clips]) for _ in range(reps))
        row[name] = round(len(clips) / best, 1)
    row["strict/decord"] = round(row["pyav_strict"] / row["decord"], 3)
    return row


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _count(path: Path) -> int:
    with av.open(str(path)) as c:
        return c.streams.video[0].frames


def main() -> None:
    out = OUT / "video_fuzz"
    clips = [Path(write_tour(out, 0, "train", i)["media"]) for i in range(3)]
    clips = [out / "videos" / c for c in clips]
    table = fuzz(clips, out / "damaged")
    print(f"{'kind':18} {'files':>5} | before: silent quar ident unstable | after: silent quar ident unstable")
    tot = {"before": Counter(), "after": Counter()}
    for kind in COUNTS:
        row = table[kind]
        for name in tot:
            tot[name].update(row.get(name, {}))
        cells = [" ".join(f"{row.get(n, {}).get(v, 0):>4}" for v in ("silent", "quarantined", "identical", "unstable")) for n in ("before", "after")]
        tag = " (codec)" if kind in CODEC_KINDS else ""
        print(f"{kind + tag:18} {COUNTS[kind]:>5} | {cells[0]:>32} | {cells[1]:>31}")
    print(f"{'total':18} {sum(COUNTS.values()):>5} | " + " | ".join(
        " ".join(f"{tot[n][v]:>4}" for v in ("silent", "quarantined", "identical", "unstable")) for n in tot))
    sp = speed(clips)
    for label, row in sp.items():
        print(f"decode all frames, {label}: " + ", ".join(f"{k} {v}" + ("" if "/" in k else " frames/s") for k, v in row.items()))
    ep = sampled_speed(clips)
    print("16 sampled frames per demo clip: " + ", ".join(f"{k} {v}" + ("" if "/" in k else " episodes/s") for k, v in ep.items()))
    record("video_fuzz", {"fuzz": table, "speed": sp, "sampled": ep})


if __name__ == "__main__":
    main()
