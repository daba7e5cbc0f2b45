"""What `navcache train` prints: one short line per epoch, a short summary, the full result only with --json,
no transformers chatter, and plain words when a metric does not beat its baseline (heads/console.py)."""
from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from navcache.heads import console

pytestmark = pytest.mark.slow  # trains on the session's demo caches

SIM_KEYS = ("risk", "reason", "action", "risk_high_recall", "macro_f1")


@pytest.fixture
def in_demo(demo_caches, monkeypatch):
    # the session's demo folder: its caches are up to date, so `train` builds nothing
    monkeypatch.chdir(demo_caches)
    return demo_caches


def _train(*args: str):
    from navcache import cli
    r = CliRunner().invoke(cli.app, ["train", "sim-heads", *args])
    assert r.exit_code == 0, r.output
    return r


def _epoch_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if re.match(r"epoch \d+/\d+  ", ln)]


def test_two_epochs_print_two_short_lines_and_a_summary(in_demo, tmp_path):
    r = _train("--epochs", "2", "--out-dir", str(tmp_path / "run"))
    out = r.stdout
    assert len(out.splitlines()) < 15, out
    lines = _epoch_lines(out)
    assert [ln.split()[1] for ln in lines] == ["1/2", "2/2"], out
    for ln in lines:
        assert len(ln) < 300 and "{" not in ln, ln  # no metrics dict
        assert all(f" {k} 0." in ln or f" {k} 1." in ln for k in SIM_KEYS), ln
        assert "elapsed" in ln and "ETA" in ln
    assert " * " in lines[0] + " "  # the first evaluation is always the best so far
    assert "risk_high_recall, then macro_f1" in out  # the rule behind best.pt, said up front and in the summary
    assert re.search(r"^best\.pt: epoch [12] \(rule: highest val risk_high_recall, then macro_f1\)$", out, re.M), out
    assert f"out_dir: {tmp_path / 'run'}" in out
    assert "Loading weights" not in r.output and "Loading weights" not in r.stderr
    # the log file keeps every metric of every evaluation
    log = (tmp_path / "run/logs/stdout.log").read_text()
    assert log.count("val {") == 2 and "base_majority_risk_accuracy" in log


def test_json_flag_gives_the_whole_result_alone_on_stdout(in_demo, tmp_path):
    r = _train("--epochs", "1", "--out-dir", str(tmp_path / "run"), "--json")
    res = json.loads(r.stdout)
    assert res["out_dir"] == str(tmp_path / "run") and res["best"]["epoch"] == 1
    assert res["best"]["rule"] == "highest val risk_high_recall, then macro_f1"
    assert list(res["best"]["key_metrics"].values()) == list(SIM_KEYS)
    assert len(_epoch_lines(r.stderr)) == 1  # progress went to stderr
    assert "Loading weights" not in r.output


def test_a_metric_below_its_baseline_is_said_plainly(in_demo, tmp_path):
    """At (almost) zero learning rate the heads stay at their random init: some key metric does not beat
    its majority baseline, and exactly those are named, in the epoch line and the summary."""
    r = _train("--epochs", "1", "--lr", "1e-9", "--out-dir", str(tmp_path / "run"))
    best = json.loads((tmp_path / "run/metrics/val_metrics.jsonl").read_text().splitlines()[0])
    bases = console.baselines(best)
    shown = {"risk_accuracy": "risk", "reason_accuracy": "reason", "action_accuracy": "action", "macro_f1": "macro_f1"}
    weak = {label for k, label in shown.items() if any(best[k] <= b for _, b in bases[k])}
    assert weak, best  # the point of the test: something is below its baseline
    line = _epoch_lines(r.stdout)[0]
    summary = next(ln for ln in r.stdout.splitlines() if "does not beat its baseline" in ln)
    for k, label in shown.items():
        b = dict(bases[k])["majority"]
        said = f"{label} {best[k]:.3f} ({'<' if best[k] < b else '='} majority {b:.3f})"
        assert (said in line) == (label in weak), (label, line)
        assert (f"{label} {best[k]:.3f} {'<' if best[k] < b else '='} majority" in summary) == (label in weak), (label, summary)


def test_baselines_are_matched_to_their_metrics():
    m = {"acc_next_yaw": 0.55, "loss_next_yaw": 1.0, "base_majority_next_yaw": 0.58, "base_repeat_next_yaw": 0.3,
         "risk_accuracy": 0.7, "base_majority_risk_accuracy": 0.6, "macro_f1": 0.4, "base_majority_macro_f1": 0.2, "n": 5}
    assert console.baselines(m) == {"acc_next_yaw": [("majority", 0.58), ("repeat", 0.3)], "risk_accuracy": [("majority", 0.6)],
                                    "macro_f1": [("majority", 0.2)]}
    assert console.metric_text("yaw", 0.55, [("majority", 0.58), ("repeat", 0.3)]) == "yaw 0.550 (< majority 0.580)"
    assert console.metric_text("risk", 0.7, [("majority", 0.6)]) == "risk 0.700"
