"""Atomic writers killed mid-write leave their temporaries; the next run of the same writer to the
same output removes them, and only what provably belongs to a dead writer of that output.

Each case plants, beside the output, temporaries named exactly as the writer names its own
(``private_name``): one of a writer SIGKILLed mid-write and long untouched (swept), one of a killed
writer written recently (kept: it may be a live writer on another host sharing the folder), one of
a live writer (this process; kept however old), and one of another output (kept). Then it runs the
real writer.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from navcache.cache_specs.layout import TMP_PREFIX, private_name, sweep_stale_temporaries

STALE = 2 * 3600  # well past the sweep's age threshold (layout.STALE_AFTER)

# a writer that makes its temporary exactly as the real ones name it (``private_name``), writes part
# of it (a folder holds a file), then hangs until killed
_WRITER = """
import sys, time
from pathlib import Path
from navcache.cache_specs.layout import private_name
folder, prefix, name, kind = sys.argv[1:]
tmp = Path(folder) / private_name(prefix, name)
if kind == "dir":
    tmp.mkdir()
    (tmp / "sub").mkdir()
    f = open(tmp / "sub" / "weights.bin", "wb")
else:
    f = open(tmp, "wb")
f.write(b"half a file")
f.flush()
print(tmp, flush=True)
time.sleep(600)
"""


def killed_writer(folder: Path, prefix: str, name: str, kind: str) -> Path:
    """The temporary a writer left when SIGKILLed mid-write (its pid is then dead and reaped)."""
    p = subprocess.Popen([sys.executable, "-c", _WRITER, str(folder), prefix, name, kind], stdout=subprocess.PIPE, text=True)
    tmp = Path(p.stdout.readline().strip())
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert tmp.exists()
    return tmp


def age(path: Path, seconds: float = STALE) -> None:
    """Set the mtime of ``path`` and everything under it ``seconds`` in the past."""
    t = time.time() - seconds
    for p in [*(path.rglob("*") if path.is_dir() else ()), path]:
        os.utime(p, (t, t), follow_symlinks=False)


def plant(folder: Path, prefix: str, name: str, kind: str) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    dead_old = killed_writer(folder, prefix, name, kind)
    age(dead_old)
    dead_young = killed_writer(folder, prefix, name, kind)
    live = folder / private_name(prefix, name)  # this process's: a live writer, however old
    live.write_bytes(b"partial")
    age(live)
    pid = dead_old.name.split("-")[-2]
    other = folder / f"{prefix}other-{pid}-0123abcd"  # another output's, by a dead writer
    other.write_bytes(b"x")
    age(other)
    return {"dead_old": dead_old, "dead_young": dead_young, "live": live, "other": other}


def check_swept(planted: dict[str, Path]) -> None:
    assert not planted["dead_old"].exists()
    assert all(planted[k].exists() for k in ("dead_young", "live", "other"))


def test_checkpoint_save_sweeps_killed_saves(tmp_path):
    from navcache.heads.checkpoint import atomic_save

    path = tmp_path / "checkpoints" / "last.pt"
    planted = plant(path.parent, TMP_PREFIX, path.name, "file")
    atomic_save({"epoch": 1, "w": torch.ones(3)}, path)
    check_swept(planted)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    names = {p.name for p in path.parent.iterdir()}
    assert names == {path.name} | {planted[k].name for k in ("dead_young", "live", "other")}


def test_truncate_jsonl_sweeps_killed_rewrites(tmp_path):
    from navcache.heads.checkpoint import truncate_jsonl

    path = tmp_path / "metrics" / "train.jsonl"
    planted = plant(path.parent, TMP_PREFIX, path.name, "file")
    path.write_text('{"epoch": 0, "step": 1}\n{"epoch": 1, "step": 2}\n')
    truncate_jsonl(path, 0, 1)
    check_swept(planted)
    assert path.read_text() == '{"epoch": 0, "step": 1}\n'


def test_tiny_encoder_maker_sweeps_killed_saves(tmp_path):
    from navcache.pipeline.encoders.tiny import make_random_dinov3
    from navcache.pipeline.encoders.weights import PROVENANCE_FILE

    out = tmp_path / "models" / "dinov3-tiny"
    planted = plant(out.parent, TMP_PREFIX, out.name, "dir")
    make_random_dinov3(out, size="tiny", seed=0, image_size=32)
    check_swept(planted)
    assert (out / PROVENANCE_FILE).is_file()


def test_random_gpt2_maker_sweeps_killed_saves(tmp_path):
    from navcache.heads.sim_heads.model import RANDOM_INIT_MARKER, make_random_gpt2

    path = tmp_path / "llm" / "gpt2-random"
    planted = plant(path.parent, TMP_PREFIX, path.name, "dir")
    make_random_gpt2(path, seed=0)
    check_swept(planted)
    assert (path / RANDOM_INIT_MARKER).is_file()


def test_demo_generation_sweeps_killed_builds(tmp_path):
    from navcache.pipeline.demo import generate_demo

    out = tmp_path / "demo"
    planted = plant(tmp_path, "", f"{out.name}.tmp", "dir")
    aside = killed_writer(tmp_path, "", f"{out.name}.old", "dir")  # an old demo set aside by a kill between renames
    age(aside)
    info = generate_demo(out, scale=0.02, pixels=False, workers=1)
    check_swept(planted)
    assert not aside.exists()
    assert (out / "demo_info.json").is_file() and info.root == out


def test_a_folder_with_anything_recent_inside_is_kept(tmp_path):
    """A folder's own mtime does not change while a file deep inside it grows: the whole tree counts."""
    tmp = killed_writer(tmp_path, TMP_PREFIX, "out", "dir")
    age(tmp)
    os.utime(tmp / "sub" / "weights.bin")  # written just now
    assert sweep_stale_temporaries(tmp_path, TMP_PREFIX + "out") == []
    age(tmp)
    assert sweep_stale_temporaries(tmp_path, TMP_PREFIX + "out") == [tmp] and not tmp.exists()


@pytest.mark.parametrize("name", ["notapid-0123abcd", "123-0123abc", "123-0123abcd-x", "123-0123ABCD"])
def test_only_the_writers_exact_pattern_is_a_candidate(tmp_path, name):
    lookalike = tmp_path / f"{TMP_PREFIX}out-{name}"
    lookalike.write_bytes(b"x")
    age(lookalike)
    assert sweep_stale_temporaries(tmp_path, TMP_PREFIX + "out") == [] and lookalike.exists()


def test_sim_heads_export_sweeps_killed_exports(tmp_path):
    """The export's build folder (``.<out>.tmp-<pid>-<hex>``), and an old export a kill left set aside
    between ``_commit_dir``'s two renames (``.<out>.old-<pid>-<hex>``, swept once ``out`` is whole)."""
    from navcache.heads.checkpoint import atomic_save, trainable_state
    from navcache.heads.sim_heads.export import MODEL_FILE, export_checkpoint
    from navcache.heads.sim_heads.model import RANDOM_GPT2
    from navcache.heads.sim_heads.predict import build_model

    llm = {"random_init": True, "seed": 0, **RANDOM_GPT2}
    model = build_model(llm, 8, 2, 2, RANDOM_GPT2["n_embd"], 16, 0.0)
    md = {"head": "sim-heads", "llm": llm, "dv": 8, "F": 2, "K": 2, "d": RANDOM_GPT2["n_embd"],
          "config": {"telemetry_hidden": 16}, "telemetry_norm": {"mean": [0.0], "std": [1.0]}}
    ckpt = tmp_path / "checkpoints" / "best.pt"
    ckpt.parent.mkdir()
    atomic_save({"metadata": md, "model": trainable_state(model), "epoch": 1}, ckpt)

    out = tmp_path / "run" / "export"
    planted = plant(out.parent, ".", f"{out.name}.tmp", "dir")
    aside = killed_writer(out.parent, ".", f"{out.name}.old", "dir")
    age(aside)
    export_checkpoint(ckpt, out, model=model)
    check_swept(planted)
    assert not aside.exists() and (out / MODEL_FILE).is_file()
