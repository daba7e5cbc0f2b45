"""Decode threads run torch ops on one thread each, and leave the process's own count alone.

torch keeps a process-wide thread count that a thread reads the first time it runs a parallel op;
``torch.set_num_threads(1)`` in a decode thread sets it, so a caller that had not yet run one (the
encoder's first forward, a trainer started after ``ensure``) would otherwise run on one core.
Checked in a fresh interpreter, where nothing has fixed the main thread's count yet."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import threading, torch
from navcache.pipeline.executors.local import decode_threads
with decode_threads(2) as pool:
    workers = {pool.submit(torch.get_num_threads).result() for _ in range(4)}
    inside = torch.get_num_threads()
late = []
t = threading.Thread(target=lambda: late.append(torch.get_num_threads()))
t.start(); t.join()
print(sorted(workers), inside, torch.get_num_threads(), late[0])
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores for torch's default count to exceed 1")
def test_decode_threads_keep_the_callers_and_later_threads_count():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    workers, inside, after, late = out.stdout.split("]")[0] + "]", *out.stdout.split("]")[1].split()
    assert workers == "[1]"  # every decode thread runs its ops alone
    assert int(inside) == int(after) == int(late) > 1  # the caller, and threads started after the pool


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_decode_threads_yield_to_the_thread_feeding_the_device():
    from navcache.pipeline.executors.local import DECODE_NICE, decode_threads

    own = os.getpriority(os.PRIO_PROCESS, 0)
    with decode_threads(2) as pool:
        nice = {pool.submit(lambda: os.getpriority(os.PRIO_PROCESS, __import__("threading").get_native_id())).result() for _ in range(4)}
    assert nice == {min(19, own + DECODE_NICE)}
    assert os.getpriority(os.PRIO_PROCESS, 0) == own  # the caller keeps its priority


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores for a count above 1")
def test_torch_threads_sets_the_count_inside_and_restores_it():
    import torch

    from navcache.pipeline.encoders.base import torch_threads

    keep = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError):
            with torch_threads(1) as caller:
                assert (caller, torch.get_num_threads()) == (2, 1)
                with torch_threads(caller):
                    assert torch.get_num_threads() == 2
                assert torch.get_num_threads() == 1
                raise RuntimeError("the count comes back after an error too")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(keep)
