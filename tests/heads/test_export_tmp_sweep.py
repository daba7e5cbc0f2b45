"""``export navila-poses`` killed while writing leaves ``.tmp-<out>-<pid>-<rand>``; the next export
to the same output removes it, and only what provably belongs to a dead writer of that output."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from navcache.cli import export_for_dataset
STALE = 2 * 3600  # well past the sweep's age threshold (navila_poses.STALE_AFTER)
from navcache.pipeline.config import load_config
from tests.helpers import make_navila, write_project

# a writer that opens its temporary exactly as the export names it, writes, then hangs until killed
_WRITER = """
import sys, time
from pathlib import Path
from navcache.cache_specs.layout import TMP_PREFIX, private_name
out = Path(sys.argv[1])
tmp = out.parent / private_name(TMP_PREFIX, out.name)
with open(tmp, "w") as f:
    f.write('{"video_id": "ep000-4", "poses": [[0.0, 0.0')
    f.flush()
    print(tmp, flush=True)
    time.sleep(600)
"""


def killed_writer(out: Path) -> Path:
    """The temporary a writer left when SIGKILLed mid-write (its pid is then dead)."""
    p = subprocess.Popen([sys.executable, "-c", _WRITER, str(out)], stdout=subprocess.PIPE, text=True)
    tmp = Path(p.stdout.readline().strip())
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert tmp.is_file()
    return tmp


def age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_next_export_sweeps_a_killed_exports_temporary(tmp_path, tiny_model):
    data = make_navila(tmp_path / "data", n_episodes=3)
    project = load_config(write_project(tmp_path, data, tiny_model))
    out = tmp_path / "exports" / "poses_train.jsonl"
    out.parent.mkdir()
    dead_old = killed_writer(out)
    age(dead_old, STALE)
    dead_young = killed_writer(out)  # maybe a writer on another host sharing this folder: kept for now
    live = out.parent / f".tmp-{out.name}-{os.getpid()}-0123abcd"  # a live writer's (this process)
    live.write_text("partial")
    age(live, STALE)
    other = out.parent / f".tmp-other.jsonl-{dead_old.name.split('-')[-2]}-0123abcd"  # another output's
    other.write_text("x")
    age(other, STALE)
    mine_lookalike = out.parent / f".tmp-{out.name}-notapid-0123abcd"
    mine_lookalike.write_text("x")
    age(mine_lookalike, STALE)

    report = export_for_dataset(project, "nav", "train", out)

    assert report.records == 6 and len(out.read_text().splitlines()) == 6
    assert not dead_old.exists()
    assert dead_young.exists() and live.exists() and other.exists() and mine_lookalike.exists()
    age(dead_young, STALE)
    export_for_dataset(project, "nav", "train", out)
    assert not dead_young.exists() and live.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([out.name, live.name, other.name, mine_lookalike.name])
    assert json.loads(out.read_text().splitlines()[0])["video_id"] == "ep000-4"
