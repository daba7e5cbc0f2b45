"""``spatial-llava3d-lm``: the full LLaVA-3D model in an isolated worker process.

The worker is the real ``llava3d_worker.py`` under this interpreter with the stand-in backend
(``tests/standins/llava3d_lm_standin.py``: tiny random-init Llama + CLIP + 3-D patch path on
navcache's own transformers), so the protocol, the crash/timeout handling and the stage are the
code that runs against LLaVA-3D (docs/llava3d_lm.md: the same worker against the real class).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from navcache.pipeline.encoders.llava3d_lm import Llava3DLMSettings, reduce_tokens

ROOT = Path(__file__).resolve().parents[2]
BACKEND = "tests.standins.llava3d_lm_standin:StandInLLaVA3D"


# -- the token budget ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, 64, 65, 200])
def test_pool_equals_torch_adaptive_average_pooling(n):
    import torch

    h = np.random.default_rng(n).normal(size=(n, 6)).astype(np.float32)
    out, valid = reduce_tokens(h, 64, "pool")
    if n <= 64:
        assert valid.sum() == n and (out[:n] == h).all() and (out[n:] == 0).all()
    else:
        want = torch.nn.functional.adaptive_avg_pool1d(torch.from_numpy(h).T[None], 64)[0].T.numpy()
        assert valid.all()
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_last_keeps_the_final_positions_in_order():
    h = np.arange(30, dtype=np.float32).reshape(10, 3)
    out, valid = reduce_tokens(h, 4, "last")
    assert valid.all() and (out == h[6:]).all()
    out, valid = reduce_tokens(h, 12, "last")
    assert valid.tolist() == [True] * 10 + [False] * 2 and (out[:10] == h).all()


def test_settings_name_the_field():
    with pytest.raises(ValueError, match="token_budget must be an integer >= 1"):
        Llava3DLMSettings(token_budget=0)
    with pytest.raises(ValueError, match="reduce must be one of last, pool"):
        Llava3DLMSettings(reduce="mean")
    with pytest.raises(ValueError, match=r"prompt must contain \{task\}"):
        Llava3DLMSettings(prompt="go")
    with pytest.raises(ValueError, match="backend 'evil.mod:Backend' is not allowed"):
        Llava3DLMSettings(backend="evil.mod:Backend")
    Llava3DLMSettings(backend="evil.mod:Backend", allow_custom_code=True)


# -- the worker ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    from tests.pipeline.test_spatial import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture(scope="module")
def standin(tmp_path_factory, tiny_clip) -> Path:
    from tests.standins.llava3d_lm_standin import make_standin

    return make_standin(tmp_path_factory.mktemp("lm") / "llava3d-standin", tiny_clip)


def _worker(model: Path, start_timeout: float = 120):
    from navcache.pipeline.encoders.llava3d_client import LMWorker

    return LMWorker(sys.executable, ["--backend", BACKEND, "--source", str(ROOT), "--model", str(model), "--device", "cpu", "--dtype", "fp32"], start_timeout)


@pytest.mark.slow  # two worker starts (~8 s each on a busy machine)
def test_worker_failures_are_errors_with_reasons_never_hangs(tmp_path, tiny_clip):
    """A model that cannot load: WorkerFailed naming the loader's error. A request the worker
    fails: RequestFailed, the worker lives on. A worker that stops answering: killed at the
    deadline, WorkerFailed."""
    from navcache.pipeline.encoders.llava3d_client import RequestFailed, WorkerFailed
    from tests.standins.llava3d_lm_standin import make_standin

    w = _worker(tmp_path / "absent")
    with pytest.raises(WorkerFailed, match="could not load the model: .*absent"):
        w.start()
    w.close()

    slow = make_standin(tmp_path / "llava3d-slow", tiny_clip, standin_sleep_at_frame=1)
    w = _worker(slow)
    w.start()
    pid = w._proc.pid
    rng = np.random.default_rng(0)
    k = np.broadcast_to(np.array([[40, 0, 28, 0], [0, 40, 28, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32), (1, 1, 4, 4))
    args = ([rng.integers(0, 255, (1, 64, 64, 3), np.uint8)], np.full((1, 1, 56, 56), 2.0, np.float32),
            np.broadcast_to(np.eye(4, dtype=np.float32), (1, 1, 4, 4)), k)
    with pytest.raises(RequestFailed, match="ValueError: need at least one array"):  # no frame: the worker's own error
        w.encode("go", args[0], *(a[:0] for a in args[1:]), timeout_s=60)
    assert w._proc.pid == pid and w._proc.poll() is None  # ... and it goes on
    with pytest.raises(WorkerFailed, match="did not answer within 2 s while encoding 1 frames"):
        w.encode("go", *args, timeout_s=2)
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)
    w.close()


# -- through the pipeline ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lerobot(tmp_path_factory) -> Path:
    from navcache.pipeline.demo.lerobot_writer import write_lerobot_dataset

    root = tmp_path_factory.mktemp("lr") / "v3.0"
    write_lerobot_dataset(root, "v3.0", scale=0.5)
    return root


def _settings(model: Path, **more) -> dict:
    return {"model": str(model), "lm_python": sys.executable, "lm_source": str(ROOT), "backend": BACKEND, "token_budget": 16, **more}


@pytest.mark.slow
def test_hidden_states_through_the_stage(tmp_path, lerobot, tiny_clip):
    """Demo LeRobot data, MapAnything stand-in for depth + pose, the LM stand-in in its worker:
    one crash quarantines exactly the episode it hit (the run completes, a new worker serves the
    rest); the rows reopen with the spec's shapes and equal the stand-in run in this process; a
    different task text changes the fingerprint and the states."""
    from navcache.cache_specs import open_cache
    from navcache.pipeline.sources import make_source
    from tests.pipeline.test_spatial import MA, _extract, _project
    from tests.standins.llava3d_lm_standin import make_standin, reference_hidden_states
    from tests.standins.mapanything_standin import make_standin as make_mapanything

    spatial = {"stride": 8, "mapanything": {"model": str(make_mapanything(tmp_path / "ma")), **MA}}
    model = make_standin(tmp_path / "llava3d-standin", tiny_clip, standin_crash_at_frame=3, standin_crash_flag=str(tmp_path / "crashed"))
    summary = _extract(_project(tmp_path, lerobot, spatial, spatial_llava3d_lm=_settings(model)))
    assert not summary.errors, summary.errors
    c = open_cache(tmp_path / "cache/lr/train/spatial_llava3d_lm")
    status = list(c.index["status"])
    assert status.count("quarantined") == 1 and summary.quarantined == 1 and len(status) >= 3
    bad = status.index("quarantined")
    assert bad == 1  # frames 1-2 were episode 0's: frame 3 is episode 1's first
    assert "LLaVA-3D worker failed on frames 0..".lower() in c.index["reason"][bad].lower() and "exited (code 17)" in c.index["reason"][bad]
    assert '"random_init": true' in __import__("json").dumps(c.manifest)

    src = make_source("lerobot", lerobot, num_frames=2)
    eps = {e.episode_id: e for e in src.episodes("train")}
    sp = open_cache(tmp_path / "cache/lr/train/spatial")
    from navcache.pipeline.stages.spatial_llava3d_lm import SpatialLlava3DLMSettings, SpatialLlava3DLMStage

    stage = SpatialLlava3DLMStage(SpatialLlava3DLMSettings(**_settings(model)), src, {})
    stage._crop = 56
    first = {}
    for eid, st in zip(c.index["episode_id"], status):
        if st != "ok":
            continue
        row = c[eid]
        assert row["hidden"].shape == (2, 16, 32) and row["hidden"].dtype == np.float16 and row["valid"].all()
        assert (row["tokens"] > row["visual_tokens"]).all() and (row["visual_tokens"] > 0).all()
        rec = eps[eid].record
        assert (row["task_index"] == rec["task_index"]).all()
        p = stage.prepare(eps[eid], {"spatial": sp[eid]}).payload
        for t in range(2):
            ref = reference_hidden_states(model, [v[t] for v in p["views"]], p["depth"][t], p["pose"][t], p["intrinsics"][t], rec["task"])
            assert ref.shape[0] == row["tokens"][t]
            np.testing.assert_allclose(row["hidden"][t].astype(np.float32), ref[-16:], rtol=2e-2, atol=2e-3)
        first[eid] = row["hidden"]

    # a fixed task text instead of the episodes' own: every part is stale and the states change
    summary = _extract(_project(tmp_path, lerobot, spatial, spatial_llava3d_lm=_settings(model, task="Stop.")))
    assert not summary.errors and {s.stage: s.parts_built for s in summary.stages} == {"spatial": 0, "spatial-llava3d-lm": 1}
    c2 = open_cache(tmp_path / "cache/lr/train/spatial_llava3d_lm")
    assert set(c2.index["status"]) == {"ok"}
    eid = next(iter(first))
    assert (c2[eid]["task_index"] == -1).all() and not np.allclose(c2[eid]["hidden"], first[eid])


@pytest.mark.slow  # the demo dataset and model folders: ~4 s when first to need them
def test_task_text_and_model_enter_the_fingerprint(tmp_path, lerobot, standin):
    """Identity: the fixed task, the prompt and the weights; per episode: the ``task`` label."""
    from navcache.pipeline.errors import ConfigError
    from navcache.pipeline.sources import make_source
    from navcache.pipeline.stages.spatial_llava3d_lm import SpatialLlava3DLMSettings, SpatialLlava3DLMStage

    src = make_source("lerobot", lerobot, num_frames=2)
    st = lambda **kw: SpatialLlava3DLMStage(SpatialLlava3DLMSettings(**_settings(standin, **kw)), src, {})  # noqa: E731
    base = st()
    assert "task" in base.record_keys and base.consumes == ("spatial",) and base.dims() == {"V": 2, "K": 16, "D": 32}
    assert base.identity() != st(task="Stop.").identity() != st(prompt="Robot: {task}").identity()
    assert base.identity()["lm"]["vision_tower"]["weights"] and base.lm.random_init
    base.check()
    with pytest.raises(ConfigError, match="stages.spatial-llava3d-lm.lm_python: '/nope/python' is not an executable file"):
        st(lm_python="/nope/python").check()
    with pytest.raises(ConfigError, match="stages.spatial-llava3d-lm.task: source 'videos' has no task text"):
        from navcache.pipeline.demo.video_writer import write_tour

        write_tour(tmp_path / "data", seed=0, split="train", index=0)
        SpatialLlava3DLMStage(SpatialLlava3DLMSettings(**_settings(standin), xyz_from="gt"), make_source("videos", tmp_path / "data/videos", num_frames=2), {})


@pytest.mark.slow  # one worker start
def test_a_killed_parent_leaves_no_worker_and_no_files(tmp_path, standin):
    """SIGKILL the process that started the worker: its stdin closes, it exits and removes its folder."""
    import os
    import signal
    import subprocess
    import time

    code = ("import sys; from tests.pipeline.test_spatial_llava3d_lm import _worker; from pathlib import Path; "
            "w = _worker(Path(sys.argv[1])); w.start(); print(w._proc.pid, w._dir, flush=True); sys.stdin.read()")
    parent = subprocess.Popen([sys.executable, "-c", code, str(standin)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    pid, folder = parent.stdout.readline().split()
    assert Path(folder).is_dir()
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 120  # a generous bound on the worker's own shutdown, not a timing claim
    while time.monotonic() < deadline:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(int(pid), signal.SIGKILL)
        pytest.fail("the worker outlived its parent")
    assert not Path(folder).exists()
