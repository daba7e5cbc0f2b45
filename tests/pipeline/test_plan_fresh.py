"""A first extract plans before hashing (``plan._plan_fresh``): its parts' fingerprints are filled
in on a background thread while the build decodes. The plan it resolves to is the one full
planning gives, field for field, across a chain whose stages consume each other; a failure in
the background fingerprinting fails the build before any part is committed."""
from __future__ import annotations

import threading

import pytest

from navcache.cache_specs.layout import PARTS
from navcache.pipeline import plan as plan_mod
from navcache.pipeline.plan import PendingPart, plan_split
from navcache.pipeline.runner import ExtractOptions, extract
from tests.helpers import demo_job


class ThreadAhead:
    """``plan.Ahead`` on plain threads: loads nothing, runs ``later`` work on its own thread."""

    def __init__(self):
        self.threads: list[threading.Thread] = []

    def load(self, stage) -> None:
        pass

    def later(self, fn) -> None:
        t = threading.Thread(target=fn, name="test-later")
        t.start()
        self.threads.append(t)

    def join(self) -> None:
        for t in self.threads:
            t.join(60)


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
