"""Leases: claims on shared work, so concurrent runs in one cache folder split it instead of
doing it twice. An optimisation only: correctness still rests on the atomic commit of each part
(``cache_specs/parts.py``: a part built twice is published once, identical either way).

A lease is one small file, created with ``O_CREAT | O_EXCL`` (atomic on local filesystems and on
NFSv3+, Lustre, GPFS: exactly one creator wins). It holds JSON naming its owner (host, machine
id, pid, process start time, a random token) and a heartbeat counter that a daemon thread
rewrites every ``timeout / 6`` seconds by writing a private temporary file and renaming it over
the lease (a reader sees the old or the new content, never a torn one).

Staleness never reads a clock of another machine, nor an mtime: a waiter remembers the exact
bytes it last saw and when (its own ``time.monotonic``); bytes unchanged for ``timeout`` seconds
mean a dead, frozen or unreachable owner. So clock skew between nodes and coarse timestamp
granularity on NFS cannot make a live lease look stale. Shortcut: an owner on this same machine
(same host name, boot id and pid namespace) whose pid is gone, or now belongs to a process with
another start time, is dead at once, so a rerun after a SIGKILL does not wait.

Taking over a stale lease, race by race (the lease must be replaced only if it is still the
stale one, and two takers must not both win):

1. ``rename(lease, grave)``, ``grave`` a private name. A rename is atomic, so exactly one taker
   moves a given lease file away; the others get ENOENT and go back to step 3's create.
2. Read ``grave``. If its bytes are still the stale bytes, it was the dead lease: delete it.
   If they differ, a heartbeat or another taker's fresh lease landed between our look and our
   rename: put it back with ``link(grave, lease)`` (fails if a newer lease already took the name,
   which then stands) and give up.
3. Compete for the name with ``O_EXCL`` like any first claim: one taker wins.

A heartbeat whose owner finds the lease gone or no longer its own stops and marks the lease lost;
the owner finishes its part anyway (the atomic commit makes a duplicate harmless), so the only
cost of the rare interleavings above (an owner frozen past the timeout and then resuming) is work
done twice, never a wrong cache. Needs close-to-open consistency (NFS's default; not ``nocto``).

Leases of parts live in the cache folder as ``parts/.tmp-lease-<part>`` (``LEASE_PREFIX``): a
private temporary name, so ``navcache verify`` reads them as temporaries, not strays, and
finalisation's sweep deletes any a killed run left.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

from navcache.cache_specs.layout import LEASE_PREFIX, TMP_PREFIX, private_name

LEASE_FORMAT = "navcache-lease/1"
DEFAULT_TIMEOUT_S = 60.0
T = TypeVar("T")


def lease_path(folder: Path, name: str) -> Path:
    return Path(folder) / f"{LEASE_PREFIX}{name}"


def _read(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _machine() -> str:
    """Host name + boot id + pid namespace: equal only where pids name the same processes."""
    parts = [socket.gethostname()]
    for f in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(os.readlink(f) if f.endswith("pid") else Path(f).read_text().strip())
        except OSError:
            parts.append("?")
    return "|".join(parts)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (None if no such process / no /proc,
    or a killed one its parent has not reaped yet: a zombie holds no lease)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # from field 3 on: the command name may hold spaces
    return None if fields[0] in ("Z", "X") else fields[19]


@dataclass(frozen=True)
class Owner:
    host: str
    machine: str
    pid: int
    start: str | None
    token: str

    @classmethod
    def me(cls) -> "Owner":
        return cls(socket.gethostname(), _machine(), os.getpid(), _start_time(os.getpid()), secrets.token_hex(8))

    def record(self, beat: int) -> bytes:
        return json.dumps({"format": LEASE_FORMAT, "host": self.host, "machine": self.machine, "pid": self.pid,
                           "start": self.start, "token": self.token, "beat": beat}, sort_keys=True).encode()


def _token(content: bytes | None) -> str | None:
    try:
        return json.loads(content)["token"]
    except (TypeError, ValueError, KeyError):
        return None


def owner_is_dead_here(content: bytes) -> bool:
    """The lease names a process of this machine that no longer runs (its pid gone or reused).
    False whenever that cannot be known: another machine, no /proc, a half-written lease."""
    try:
        rec = json.loads(content)
        if rec["machine"] != _machine() or "?" in rec["machine"].split("|")[1:]:
            return False
        pid, start = int(rec["pid"]), rec["start"]
    except (TypeError, ValueError, KeyError):
        return False
    now = _start_time(pid)
    return now is None or (start is not None and now != start)


class Lease:
    """One claim at ``path``: ``acquire()`` (exclusive create) or ``take_over(stale)``, then
    ``release()``. Heartbeats run in a daemon thread while held; ``lost`` says whether the lease
    was found gone or replaced (see the module docstring)."""

    def __init__(self, path: Path, timeout_s: float = DEFAULT_TIMEOUT_S, owner: Owner | None = None):
        self.path = Path(path)
        self.timeout_s = float(timeout_s)
        self.owner = owner or Owner.me()
        self.lost = False
        self._beat = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, self.owner.record(0))
        finally:
            os.close(fd)
        self._thread = threading.Thread(target=self._heartbeat, name=f"navcache-lease-{self.path.name}", daemon=True)
        self._thread.start()
        return True

    def take_over(self, stale: bytes) -> bool:
        """Replace the lease if its content is still ``stale``, then claim it (False: lost a race)."""
        grave = self.path.with_name(private_name(TMP_PREFIX + "stale-", self.path.name))
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return self.acquire()  # released or taken meanwhile: compete for the name like anyone
        seen = _read(grave)
        if seen != stale:
            try:
                os.link(grave, self.path)  # not ours to remove: put it back unless a newer one stands
            except FileExistsError:
                pass
            except OSError:  # a filesystem without hard links: recreate it exclusively
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                    os.write(fd, seen or b"")
                    os.close(fd)
                except FileExistsError:
                    pass
            os.unlink(grave)
            return False
        os.unlink(grave)
        return self.acquire()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.timeout_s / 6):
            if _token(_read(self.path)) != self.owner.token:
                self.lost = True  # swept by a finalisation, or taken over while this process was frozen
                return
            self._beat += 1
            tmp = self.path.with_name(private_name(TMP_PREFIX, self.path.name))
            try:
                tmp.write_bytes(self.owner.record(self._beat))
                os.rename(tmp, self.path)
            except OSError:
                tmp.unlink(missing_ok=True)  # e.g. the folder swept away: the next beat sees the loss

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        # only our own lease: one that replaced it (after we were frozen past the timeout) stays
        if _token(_read(self.path)) == self.owner.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Watch:
    """What a waiter has seen of leases held by others: bytes and since when (its own clock)."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._seen: dict[Path, tuple[bytes, float]] = {}

    def stale(self, path: Path) -> bytes | None:
        """The lease's content if its owner is dead (see the module docstring), else None."""
        content = _read(path)
        if content is None:
            self._seen.pop(path, None)
            return None
        now = time.monotonic()
        old = self._seen.get(path)
        if old is None or old[0] != content:
            self._seen[path] = (content, now)
            return content if owner_is_dead_here(content) else None
        return content if now - old[1] >= self.timeout_s or owner_is_dead_here(content) else None


def claim(path: Path, watch: Watch, timeout_s: float) -> Lease | None:
    """A held lease at ``path``: a free name claimed, or a stale lease taken over; None while a
    live owner holds it."""
    lease = Lease(path, timeout_s)
    if lease.acquire():
        return lease
    stale = watch.stale(path)
    if stale is not None and lease.take_over(stale):
        return lease
    return None


def hold(path: Path, timeout_s: float = DEFAULT_TIMEOUT_S, poll_s: float | None = None) -> Lease:
    """Wait until the lease at ``path`` is ours (a lock: use as ``with hold(p): ...``)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    watch = Watch(timeout_s)
    while (lease := claim(path, watch, timeout_s)) is None:
        time.sleep(poll_s or min(0.5, timeout_s / 20))
    return lease


def claim_free(items: Sequence[T], folder: Path, name: Callable[[T], str], done: Callable[[T], bool],
               timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[tuple[T, Lease]]:
    """``(item, lease)`` for each item not ``done`` that this process can claim now, one at a time
    as the caller pulls; items another live process holds are skipped, never waited for (the
    caller holds leases of work in flight: waiting here could deadlock two runs). The caller
    releases each lease once that item is committed; ``share_work`` afterwards waits for the rest.

    Claiming as the work is pulled, not in batches, lets one pipeline run across every part a
    lone run builds (no drain and refill per batch), while concurrent runs still split the parts:
    each claims only when its own pipeline wants more."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    watch = Watch(timeout_s)
    for it in items:
        if done(it):
            continue
        lease = claim(lease_path(folder, name(it)), watch, timeout_s)
        if lease is None:
            continue
        if done(it):  # committed between the check and the claim
            lease.release()
            continue
        yield it, lease


def share_work(items: Sequence[T], folder: Path, name: Callable[[T], str], done: Callable[[T], bool],
               timeout_s: float = DEFAULT_TIMEOUT_S, max_batch: int = 8, poll_s: float | None = None) -> Iterator[list[T]]:
    """Yield batches of ``items`` this process has claimed and that are not ``done``; returns once
    every item is done, by this process or another sharing ``folder``. Between yields it waits for
    items others hold, taking over those whose owner died.

    The caller builds each batch before asking for the next (the leases are released then, or
    when the generator is closed). Batches grow with the work left (up to ``max_batch``), so a
    lone run keeps its pipeline full, and shrink to one item near the end, so concurrent runs
    finish together."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    watch = Watch(timeout_s)
    pending = list(items)
    while pending:
        want = max(1, min(max_batch, len(pending) // 16))
        mine: list[tuple[T, Lease]] = []
        keep: list[T] = []
        for it in pending:
            if len(mine) >= want:
                keep.append(it)
                continue
            if done(it):
                continue
            lease = claim(lease_path(folder, name(it)), watch, timeout_s)
            if lease is None:
                keep.append(it)
            elif done(it):  # committed between the check and the claim
                lease.release()
            else:
                mine.append((it, lease))
        pending = keep
        if not mine:
            if pending:
                time.sleep(poll_s or min(0.5, timeout_s / 20))
            continue
        try:
            yield [it for it, _ in mine]
        finally:
            for _, lease in mine:
                lease.release()
