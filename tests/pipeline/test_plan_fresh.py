"""A first extract plans before hashing (``plan._plan_fresh``): its parts' fingerprints are filled
in on a background thread as the build asks for each part (the rest once the build is over). The plan it resolves to is the one full
planning gives, field for field, across a chain whose stages consume each other; a failure in
the background fingerprinting fails the build before any part is committed."""
from __future__ import annotations

import threading

import pytest

from navcache.cache_specs.layout import PARTS
from navcache.pipeline import plan as plan_mod
from navcache.pipeline.fingerprint import FileHasher
from navcache.pipeline.plan import PendingPart, plan_split
from navcache.pipeline.runner import ExtractOptions, extract
from tests.helpers import demo_job


class ThreadAhead:
    """``plan.Ahead`` on plain threads: loads nothing, runs ``later`` work on its own thread."""

    def __init__(self):
        self.threads: list[threading.Thread] = []
        self.drains = []

    def load(self, stage) -> None:
        pass

    def later(self, fn, drain) -> None:
        t = threading.Thread(target=fn, name="test-later", daemon=True)
        t.start()
        self.threads.append(t)
        self.drains.append(drain)

    def join(self) -> None:
        for drain in self.drains:
            drain()
        for t in self.threads:
            t.join(60)
            assert not t.is_alive()


def _fields(plans) -> list:
    return [(sp.stage_name, [(p.part_id, [e.episode_id for e in p.episodes], p.fingerprint, p.state, p.group, p.episode_fps, p.upstream)
                             for p in sp.parts]) for sp in plans]


@pytest.fixture(scope="module")
def tours(tmp_path_factory, demo_world):
    return demo_job(tmp_path_factory, demo_world, "fresh_job")


def test_a_fresh_plan_resolves_to_the_full_plan_across_a_chain(tours):
    _, project = tours
    ahead = ThreadAhead()
    fresh = plan_split(project, "demo_tours", "train", ahead=ahead)
    assert [sp.stage_name for sp in fresh] == ["geometry", "keyframes", "frame-features"]
    assert all(isinstance(p, PendingPart) for sp in fresh for p in sp.parts)
    assert any(sp.stage.consumes for sp in fresh)  # upstream locations are resolved in the background too
    full = plan_split(project, "demo_tours", "train")  # no ahead: hashed before returning
    assert not any(isinstance(p, PendingPart) for sp in full for p in sp.parts)
    got = _fields(fresh)  # waits for the background thread
    ahead.join()
    assert got == _fields(full)
    assert all(p.fingerprint and len(p.episode_fps) == len(p.episodes) for sp in fresh for p in sp.parts)


def test_inputs_are_hashed_as_the_build_asks_for_each_part_and_never_for_parts_it_does_not_reach(tours):
    _, project = tours
    ahead, hasher = ThreadAhead(), FileHasher(racy_s=0)  # files just written are trusted: one read each
    fresh = plan_split(project, "demo_tours", "train", hasher=hasher, ahead=ahead)
    geometry = fresh[0]
    assert geometry.stage_name == "geometry" and len(geometry.parts) >= 2
    first, second = geometry.parts[:2]
    unreached = fresh[-1].parts[-1]  # frame-features: its build never starts here
    assert hasher.reads == 0 and not first.ready.done()  # nothing asked for: nothing hashed
    first.want()
    first.ready.result(timeout=60)
    files = lambda p: {str(f) for e in p.episodes for f in geometry.stage.files_read(e)}  # noqa: E731
    assert hasher.reads == len(files(first)) and not second.ready.done()
    second.fingerprint  # a read asks for the part too
    assert hasher.reads == len(files(first) | files(second))
    ahead.join()  # the build is over: the parts it never reached (a shard's others) are not read
    assert hasher.reads == len(files(first) | files(second))
    with pytest.raises(RuntimeError, match="not hashed: the build did not reach it"):
        unreached.fingerprint  # fails at once, never waits


def test_anything_in_a_part_folder_means_full_planning(tours):
    _, project = tours
    s = extract(project, ExtractOptions("train", datasets=("demo_rover",), only="frame-features"))
    assert not s.errors, s.errors
    ahead = ThreadAhead()
    plans = plan_split(project, "demo_rover", "train", only="frame-features", ahead=ahead)
    assert not any(isinstance(p, PendingPart) for sp in plans for p in sp.parts)
    assert ahead.threads == []


def test_a_failure_while_fingerprinting_fails_the_build_and_commits_nothing(tmp_path_factory, demo_world, monkeypatch):
    _, project = demo_job(tmp_path_factory, demo_world, "fresh_fail")
    real = plan_mod.stage_fingerprints

    def failing(base, content, upstream):
        if threading.current_thread().name.startswith("navcache-plan"):
            raise OSError("disk gone while hashing")
        return real(base, content, upstream)

    monkeypatch.setattr(plan_mod, "stage_fingerprints", failing)
    s = extract(project, ExtractOptions("train", datasets=("demo_rover",), only="frame-features"))
    assert any("disk gone while hashing" in e for e in s.errors), s.errors
    assert sum(st.parts_built for st in s.stages) == 0
    parts = project.cache_root / "demo_rover" / "train" / "frame_features" / PARTS
    assert not parts.exists() or not any(p.is_dir() and (p / "part.json").exists() for p in parts.iterdir())
    monkeypatch.setattr(plan_mod, "stage_fingerprints", real)
    s = extract(project, ExtractOptions("train", datasets=("demo_rover",), only="frame-features"))
    assert not s.errors and all(st.finalized for st in s.stages)


def test_a_failed_build_does_not_hold_up_the_next_datasets_fingerprints(tmp_path_factory, demo_world, monkeypatch):
    """Each first-extract plan hashes on its own thread: the parts of a dataset whose build failed
    are never asked for (until the extract is over), and the next dataset's commits must not
    wait behind them."""
    from navcache.pipeline import runner

    _, project = demo_job(tmp_path_factory, demo_world, "fresh_two")
    real, failed = runner._build, []

    def build(project_, sp, todo, *a, **kw):
        if not failed:
            failed.append(sp.dataset)
            raise OSError("disk gone while building")
        return real(project_, sp, todo, *a, **kw)

    monkeypatch.setattr(runner, "_build", build)
    got: list = []
    t = threading.Thread(target=lambda: got.append(extract(project, ExtractOptions(
        "train", datasets=("demo_navila", "demo_rover"), only="frame-features"))), daemon=True)
    t.start()
    t.join(300)
    assert not t.is_alive(), "the extract hung: a dataset's commits waited for another's fingerprints"
    (s,) = got
    assert len(failed) == 1 and any("disk gone while building" in e for e in s.errors), s.errors
    (ok,) = [st for st in s.stages if st.dataset != failed[0]]
    assert ok.finalized and ok.parts_built > 0
