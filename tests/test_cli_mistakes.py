"""The commonest command-line mistakes fail loudly (exit 2, the valid names, the closest one) and
build nothing; a split or stage that only some datasets have builds those and says which were
skipped; dry runs print every error. Through Typer's runner, with a project file in tmp_path."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from navcache import cli
from tests.helpers import make_navila, write_project


def navcache(*args):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


@pytest.fixture()
def project(tmp_path, tiny_model) -> Path:
    """Two datasets: ``nav`` (train, val: poses + frame-features) and ``more`` (train only: poses)."""
    import shutil

    data = make_navila(tmp_path / "data", n_episodes=2)
    shutil.copytree(data / "train", data / "val")  # the same episodes as a val split
    for kind in ("annotations", "poses"):
        shutil.copy(data / f"{kind}_train.json", data / f"{kind}_val.json")
    cfg_path = write_project(tmp_path, tmp_path / "data", tiny_model, part_size=2)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["datasets"]["nav"]["splits"] = ["train", "val"]
    cfg["datasets"]["more"] = {"source": "navila", "root": str(tmp_path / "data"), "splits": ["train"], "stages": ["poses"]}
    cfg_path.write_text(yaml.safe_dump(cfg))
    return cfg_path


@pytest.mark.parametrize(
    "args, what, closest",
    [
        (("extract", "--split", "tran"), "unknown split 'tran' (valid: train, val)", "train"),
        (("extract", "--only", "frame-feature"), "unknown stage 'frame-feature' (valid: poses, frame-features)", "frame-features"),
        (("extract", "--dataset", "nva"), "unknown dataset 'nva' (valid: more, nav)", "nav"),
        (("extract", "--split", "tran", "--strict"), "unknown split 'tran'", "train"),
        (("extract", "--split", "tran", "--dry-run"), "unknown split 'tran'", "train"),
        (("status", "--split", "tran"), "unknown split 'tran'", "train"),
        (("extract", "--dataset", "more", "--split", "val"), "unknown split 'val' (valid: train)", None),  # nothing close
    ],
)
def test_a_typo_is_an_error_never_an_empty_success(project, args, what, closest):
    r = navcache(*args, "-c", project)
    assert r.exit_code == 2, r.output
    assert what in r.output, r.output
    assert (f"did you mean {closest!r}?" in r.output) if closest else ("did you mean" not in r.output), r.output
    assert not (project.parent / "cache").exists()  # nothing was built


def test_a_split_some_datasets_lack_builds_the_others_and_says_so(project):
    r = navcache("extract", "--split", "val", "-c", project, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert {(s["dataset"], s["stage"]) for s in doc["stages"]} == {("nav", "poses"), ("nav", "frame-features")}
    assert doc["skipped"] == ["dataset more has no split 'val' (its splits: train)"]
    r = navcache("extract", "--only", "frame-features", "-c", project)
    assert r.exit_code == 0 and "skipped" in r.output and "dataset more has no stage 'frame-features'" in r.output, r.output


def test_dry_run_prints_its_errors_in_the_table_mode_too(project):
    cfg = yaml.safe_load(project.read_text())
    cfg["datasets"]["more"]["root"] = str(project.parent / "no_such_root")
    project.write_text(yaml.safe_dump(cfg))
    for args in (("extract", "--dry-run"), ("status",)):
        r = navcache(*args, "-c", project)
        assert r.exit_code == 1
        assert "error" in r.output and "dataset more" in r.output and "no_such_root" in r.output, (args, r.output)


def test_inspect_a_missing_folder_or_an_unknown_episode_says_what_exists(project, tmp_path):
    r = navcache("inspect", tmp_path / "nonexistent")
    assert r.exit_code == 1 and "no such cache folder" in r.output, r.output
    (tmp_path / "empty").mkdir()
    r = navcache("inspect", tmp_path / "empty")
    assert r.exit_code == 1 and "no caches under" in r.output, r.output
    assert navcache("extract", "-c", project).exit_code == 0
    poses = project.parent / "cache" / "nav" / "train" / "poses"
    r = navcache("inspect", poses, "--episode", "ep000-44")
    assert r.exit_code == 1 and "e.g. ep000-4, " in r.output and "did you mean 'ep000-4'?" in r.output, r.output


def test_train_options_are_checked_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no navcache.yaml: the demo, which must not be generated for a bad option
    r = navcache("train", "sim-heads", "--epochs", "0")
    assert r.exit_code == 2 and "epochs" in r.output, r.output
    assert not (tmp_path / "navcache_demo").exists() and not (tmp_path / "navcache_cache").exists()


def test_predict_on_a_split_without_caches_names_the_splits(tmp_path, project):
    assert navcache("extract", "-c", project).exit_code == 0
    ckpt = tmp_path / "fake.pt"
    import torch

    torch.save({"metadata": {"head": "gru-motion", "config": {}}}, ckpt)
    r = navcache("predict", "gru-motion", tmp_path / "out.jsonl", "--checkpoint", ckpt, "--cache-root", project.parent / "cache", "--dataset", "nav", "--split", "test")
    assert r.exit_code == 2 and "unknown split 'test' (valid: train)" in r.output, r.output


def test_summary_keeps_full_names_outside_a_terminal(project):
    """A SLURM/CI log is not a terminal: the summary table must not cut dataset and stage names."""
    from tests.helpers import run_cli

    p = run_cli("extract", "-c", str(project), cwd=project.parent)
    assert "frame-features" in p.stderr and "…" not in p.stderr, p.stderr


@pytest.mark.parametrize("field, value", [("dataset", "../../escaped_ds"), ("split", "../../esc"), ("dataset", ".hidden"),
                                          ("split", "a/b"), ("split", "x..y")])
def test_an_unsafe_name_in_the_project_file_is_a_config_error(project, field, value):
    cfg = yaml.safe_load(project.read_text())
    if field == "dataset":
        cfg["datasets"][value] = cfg["datasets"].pop("more")
        where = "datasets: invalid dataset name"
    else:
        cfg["datasets"]["nav"]["splits"] = ["train", value]
        where = "datasets.nav.splits[1]: invalid split name"
    project.write_text(yaml.safe_dump(cfg))
    r = navcache("extract", "-c", project)
    assert r.exit_code == 2, r.output
    assert where in r.output and repr(value) in r.output and "Traceback" not in r.output, r.output
    assert not (project.parent / "cache").exists() and not (project.parent.parent / "escaped_ds").exists()


@pytest.mark.parametrize("args, option", [
    (("extract", "--split", "../../esc"), "--split"),
    (("extract", "--dataset", "nav", "--dataset", "../nav"), "--dataset"),
    (("extract", "--only", "../poses"), "--only"),
    (("status", "--split", "../x"), "--split"),
    (("export", "navila-poses", "OUT", "--dataset", "nav", "--split", "../../train"), "--split"),
    (("predict", "gru-motion", "OUT", "--checkpoint", "CK", "--dataset", "../nav"), "--dataset"),
])
def test_an_unsafe_name_on_the_command_line_is_refused_before_any_work(project, tmp_path, args, option):
    args = [str(tmp_path / "x.jsonl") if a == "OUT" else str(tmp_path / "ck.pt") if a == "CK" else a for a in args]
    r = navcache(*args, "-c", project) if args[0] in ("extract", "status", "export") else navcache(*args)
    assert r.exit_code == 2, r.output
    assert option in r.output and "name" in r.output, r.output
    assert not (project.parent / "cache").exists()


def test_an_unwritable_cache_root_is_a_config_error(project):
    cfg = yaml.safe_load(project.read_text())
    cfg["cache_root"] = "/proc"
    project.write_text(yaml.safe_dump(cfg))
    r = navcache("extract", "-c", project)
    assert r.exit_code == 2, r.output
    assert "cache_root: cannot write caches under '/proc'" in r.output and "Traceback" not in r.output, r.output


@pytest.mark.parametrize("head", ["sim-heads", "gru-motion"])
@pytest.mark.parametrize("how, field, value", [
    ("set", "dataset", "../../escaped_ds"),
    ("file", "dataset", "../../escaped_ds"),
    ("set", "dataset", ".hidden"),
    ("set", "splits", "[train, ../../esc]"),
])
def test_an_unsafe_name_in_a_head_config_is_refused_before_any_work(tmp_path, monkeypatch, head, how, field, value):
    monkeypatch.chdir(tmp_path)  # no navcache.yaml: the demo, which must not be generated for a bad name
    if how == "set":
        r = navcache("train", head, "--set", f"{field}={value}")
    else:
        (tmp_path / "head.yaml").write_text(yaml.safe_dump({field: value}))
        r = navcache("train", head, "--config", tmp_path / "head.yaml")
    assert r.exit_code == 2, r.output
    where = "dataset: invalid dataset name" if field == "dataset" else "splits[1]: invalid split name"
    assert where in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "navcache_demo").exists() and not (tmp_path / "navcache_cache").exists()
    assert not (tmp_path.parent.parent / "escaped_ds").exists()


@pytest.mark.parametrize("assignment, what", [
    ("core=4", "--cluster: unknown field 'core' (valid: cores, job_extra_directives, job_name, memory, processes, queue, walltime)"),
    ("cores=0", "--cluster: cores and processes must be >= 1"),
    ("cores=two", "--cluster.cores"),
    ("cores", "KEY=VALUE"),
])
def test_a_bad_cluster_option_is_refused_before_any_work(project, assignment, what):
    r = navcache("extract", "--executor", "slurm", "--cluster", assignment, "-c", project)
    assert r.exit_code == 2, r.output
    assert what in r.output and "Traceback" not in r.output, r.output
    if assignment == "core=4":
        assert "did you mean 'cores'?" in r.output, r.output
    assert not (project.parent / "cache").exists()
