"""``navcache export norm-stats`` against an independent computation: the frame table read with
pyarrow straight from the LeRobot files, chunks built by a plain loop, numpy moments/quantiles."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from navcache.heads.exports.norm_stats import norm_stats
from tests.helpers import run_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lerobot"
H = 4


def _independent(root: Path) -> dict:
    t = pq.read_table(root / "data/chunk-000/file-000.parquet")
    state = np.array(t.column("observation.state").to_pylist())
    action = np.array(t.column("action").to_pylist())
    ep = np.array(t.column("episode_index").to_pylist())
    chunks = []
    for i in range(len(ep)):
        last = max(j for j in range(len(ep)) if ep[j] == ep[i])
        chunks += [action[min(i + k, last)] for k in range(H)]
    out = {}
    for key, x in (("state", state), ("actions", np.array(chunks))):
        out[key] = {"mean": x.mean(0), "std": x.std(0), "q01": np.quantile(x, 0.01, axis=0), "q99": np.quantile(x, 0.99, axis=0)}
    return out


@pytest.mark.slow
def test_norm_stats_cli_equals_independent_computation(tmp_path):
    shutil.copytree(FIXTURES / "v30_video", tmp_path / "ds")
    (tmp_path / "navcache.yaml").write_text(yaml.safe_dump({"cache_root": "cache", "datasets": {
        "lr": {"source": "lerobot", "root": str(tmp_path / "ds"), "splits": ["train"], "stages": ["robot-meta"]}}}))
    p = run_cli("export", "norm-stats", "ns.json", "-d", "lr", "--horizon", str(H), cwd=tmp_path)
    report = json.loads(p.stdout)
    assert report["exact_quantiles"] and report["action_values"] == 21 * H
    got = json.loads((tmp_path / "ns.json").read_text())
    assert set(got) == {"norm_stats"} and set(got["norm_stats"]) == {"state", "actions"}
    want = _independent(tmp_path / "ds")
    for key in ("state", "actions"):
        assert set(got["norm_stats"][key]) == {"mean", "std", "q01", "q99"}
        for stat in ("mean", "std", "q01", "q99"):
            np.testing.assert_allclose(got["norm_stats"][key][stat], want[key][stat], rtol=1e-6, atol=1e-7)
    assert len(got["norm_stats"]["actions"]["mean"]) == 7  # unpadded dims
    # the sampled quantiles (cache too big for exact ones) stay within their documented rank bound
    approx, rep = norm_stats(tmp_path / "cache/lr/train/robot_meta", H, max_exact_bytes=0, sample_size=60)
    assert not rep.exact_quantiles
    np.testing.assert_allclose(approx["norm_stats"]["actions"]["mean"], want["actions"]["mean"], rtol=1e-6)
    eps = np.sqrt(np.log(2 / 0.001) / (2 * 60))  # the module's DKW bound for 60 samples
    flat = np.array(_chunks_flat(tmp_path / "ds"))
    for q, name in ((0.01, "q01"), (0.99, "q99")):
        lo, hi = np.quantile(flat, max(0, q - eps), axis=0), np.quantile(flat, min(1, q + eps), axis=0)
        a = np.array(approx["norm_stats"]["actions"][name])
        assert ((a >= lo - 1e-9) & (a <= hi + 1e-9)).all()


def _chunks_flat(root: Path) -> list:
    t = pq.read_table(root / "data/chunk-000/file-000.parquet")
    action = np.array(t.column("action").to_pylist())
    ep = np.array(t.column("episode_index").to_pylist())
    return [action[min(i + k, np.flatnonzero(ep == ep[i])[-1])] for i in range(len(ep)) for k in range(H)]
