"""`navcache train sim-heads` on a cache with a deleted zarr shard stops with the damage named.

Before readers checked parts, zarr read the missing shard as its fill value and the run trained
one part's clips on all-zero features and exited 0.
"""
from __future__ import annotations

import shutil

from typer.testing import CliRunner

from navcache import cli
from navcache.cache_specs.layout import PARTS


def test_train_sim_heads_on_a_damaged_cache_exits_nonzero_naming_the_part(demo_cache_root, tmp_path, monkeypatch):
    root = tmp_path / "caches"  # not the demo's own cache root: nothing is rebuilt behind the test's back
    shutil.copytree(demo_cache_root / "demo_rover", root / "demo_rover")
    feats = root / "demo_rover" / "train" / "frame_features"
    part = sorted(p for p in (feats / PARTS).iterdir())[0]
    shards = sorted(p for p in (part / "data.zarr").rglob("*") if p.is_file() and "/c/" in p.as_posix())
    assert shards, f"no zarr shard under {part}"
    shards[0].unlink()
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli.app, ["train", "sim-heads", "--cache-root", str(root), "--epochs", "1", "--out-dir", str(tmp_path / "run")])
    assert r.exit_code != 0, r.output
    assert f"part {part.name} is damaged" in r.stderr and "navcache verify --repair" in r.stderr, r.stderr
    assert str(feats) in r.stderr
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()  # no epoch trained on zeros
