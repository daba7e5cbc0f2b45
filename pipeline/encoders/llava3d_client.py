"""The parent side of the LLaVA-3D worker protocol (``llava3d_worker.py`` documents it).

``LMWorker`` starts ``llava3d_worker.py`` under another interpreter, waits for its hello, sends
requests and reads replies with deadlines, so that a worker that dies or stops answering costs
the request an error, never a hang: on a deadline the worker's process group is killed. A dead
worker is started again on the next request (``encode``), so one crash costs one request.

Hand-rolled over a library (multiprocessing, an RPC package): the worker runs under a different
interpreter and venv, so nothing may be pickled or imported across; JSON lines over pipes plus
.npy files is the whole contract, and both sides stay readable without a third dependency.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

WORKER_SCRIPT = Path(__file__).with_name("llava3d_worker.py")
PROTOCOL = 1
_LOG_TAIL = 1500


class WorkerFailed(RuntimeError):
    """The worker died, did not answer in time, or broke the protocol (it is stopped)."""


class RequestFailed(RuntimeError):
    """The worker reported an error for one request (it is still running)."""


class LMWorker:
    """One worker process at a time, started lazily; ``close()`` ends it and removes its files.

    ``args``: the worker's command-line options (``--backend`` ... without the interpreter)."""

    def __init__(self, python: str, args: Sequence[str], start_timeout_s: float):
        self.python, self.args, self.start_timeout_s = python, list(args), start_timeout_s
        self.info: dict | None = None
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()
        self._dir: Path | None = None
        self._next_id = 0
        self.starts = 0

    # -- life -------------------------------------------------------------------------------
    def start(self) -> dict:
        """Start the worker (if none runs) and return its hello ``info``; WorkerFailed if it
        exits, times out or answers anything but a protocol-1 hello."""
        if self._proc is not None and self._proc.poll() is None:
            return self.info
        self._stop()
        self._dir = Path(tempfile.mkdtemp(prefix="navcache-llava3d-"))
        # -I: the worker's venv only (no PYTHONPATH, no user site, and not this folder, whose
        # mapanything.py / prismatic.py would shadow those packages)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONHOME"}
        log = open(self._dir / "worker.log", "wb")
        try:
            self._proc = subprocess.Popen([self.python, "-I", "-u", str(WORKER_SCRIPT), *self.args, "--workdir", str(self._dir)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                                          start_new_session=True)  # its own group: a kill reaches its children too
        except OSError as e:
            raise WorkerFailed(f"cannot start {self.python!r}: {e}") from None
        finally:
            log.close()
        self.starts += 1
        self._lines = queue.Queue()
        threading.Thread(target=_pump, args=(self._proc.stdout, self._lines), daemon=True, name="navcache-llava3d-reader").start()
        msg = self._read(self.start_timeout_s, "loading the model")
        if msg.get("op") != "hello" or msg.get("protocol") != PROTOCOL or not isinstance(msg.get("info"), dict):
            self._stop()
            raise WorkerFailed(f"the worker could not load the model: {msg.get('error') or msg}")
        self.info = msg["info"]
        return self.info

    def close(self) -> None:
        """Ask the worker to exit, kill it if it does not within a few seconds, remove its files."""
        if self._proc is not None and self._proc.poll() is None:
            try:
                self._proc.stdin.write(b'{"op": "exit"}\n')
                self._proc.stdin.close()
                self._proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._stop()

    def _stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                try:
                    os.killpg(self._proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._proc.wait()
            for f in (self._proc.stdin, self._proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # -- requests -----------------------------------------------------------------------------
    def encode(self, text: str, images: Sequence[np.ndarray], depth: np.ndarray, pose: np.ndarray,
               intrinsics: np.ndarray, timeout_s: float) -> tuple[np.ndarray, list[int], list[int]]:
        """T frames of V views -> (float32 [sum L_t, D], lengths L_t, visual token counts N_t).

        images: V arrays uint8 [T, H, W, 3]; depth float32 [T, V, S, S]; pose, intrinsics
        float32 [T, V, 4, 4]. RequestFailed for a reported error, WorkerFailed otherwise."""
        self.start()
        rid = self._next_id
        self._next_id += 1
        req = self._dir / f"r{rid}"
        req.mkdir()
        try:
            for v, im in enumerate(images):
                np.save(req / f"image{v}.npy", np.ascontiguousarray(im, np.uint8), allow_pickle=False)
            for name, a in (("depth", depth), ("pose", pose), ("intrinsics", intrinsics)):
                np.save(req / f"{name}.npy", np.ascontiguousarray(a, np.float32), allow_pickle=False)
            line = json.dumps({"op": "encode", "id": rid, "dir": str(req), "views": len(images), "frames": int(depth.shape[0]), "text": text})
            try:
                self._proc.stdin.write(line.encode() + b"\n")
                self._proc.stdin.flush()
            except OSError:
                raise self._died("taking the request") from None
            msg = self._read(timeout_s, f"encoding {depth.shape[0]} frames")
            if msg.get("id") != rid:
                self._stop()
                raise WorkerFailed(f"the worker answered request {msg.get('id')!r}, expected {rid}")
            if msg.get("op") == "error":
                raise RequestFailed(str(msg.get("error")))
            hidden = np.load(req / str(msg["file"]), allow_pickle=False)
            return hidden, [int(n) for n in msg["lengths"]], [int(n) for n in msg["visual_tokens"]]
        finally:
            shutil.rmtree(req, ignore_errors=True)

    def _read(self, timeout_s: float, doing: str) -> dict:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            tail = self._log_tail()
            self._stop()
            raise WorkerFailed(f"the worker did not answer within {timeout_s:g} s while {doing} (killed){tail}") from None
        if line is None:
            raise self._died(doing)
        try:
            msg = json.loads(line)
        except ValueError:
            self._stop()
            raise WorkerFailed(f"the worker wrote a line that is not JSON while {doing}: {line[:200]!r}") from None
        if not isinstance(msg, dict):
            self._stop()
            raise WorkerFailed(f"the worker wrote {msg!r} while {doing}; the protocol wants JSON objects")
        return msg

    def _died(self, doing: str) -> WorkerFailed:
        code = self._proc.wait() if self._proc is not None else None
        tail = self._log_tail()
        self._stop()
        return WorkerFailed(f"the worker exited (code {code}) while {doing}{tail}")

    def _log_tail(self) -> str:
        try:
            text = (self._dir / "worker.log").read_bytes()[-_LOG_TAIL:].decode(errors="replace").strip()
        except (OSError, TypeError):
            return ""
        return f"; its log ends: {text}" if text else ""


def _pump(stream, lines: queue.Queue) -> None:
    """Reader thread: each stdout line onto ``lines``, then None at end of file."""
    for raw in iter(stream.readline, b""):
        lines.put(raw.decode(errors="replace"))
    lines.put(None)
