"""``navcache submit extract``: a SLURM array of shard jobs plus a finalising job, through ``sbatch``.

Task ``i`` of an ``N``-task array runs ``navcache extract --split S --shard i/N`` (it builds the new
parts of group ``% N == i`` and never finalises); a last job, submitted with
``--dependency=afterok:<array>``, runs the plain ``extract`` that finds every part built and
finalises. Everything stays in SLURM: this module only writes batch scripts and calls ``sbatch`` /
``squeue``, so requeueing, ``scancel`` and resubmission behave as cluster users expect. A shard job
killed mid-part leaves an orphan temporary folder and no committed part; resubmitting the task (or
the finalising run, which builds whatever is still missing) redoes that part alone.

Each submission keeps its scripts, job ids and logs in ``<cache_root>/.navcache/slurm/<stamp>/``:

    array.sbatch  finalize.sbatch  submission.json  task-<i>.out  task-<i>.rc  finalize.out

``task-<i>.rc`` holds the exit code of task ``i``; a task killed before it could write one (scancel,
node failure) has none. ``squeue`` gives the state of tasks still queued or running (no accounting
database is needed).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import NavcacheError

SUBMISSIONS = Path(".navcache") / "slurm"


class SlurmError(NavcacheError):
    """``sbatch`` / ``squeue`` missing or refusing: the message carries SLURM's own words."""


@dataclass(frozen=True)
class SubmitOptions:
    """What ``navcache submit extract`` passes to ``sbatch``; None leaves the cluster's default."""

    split: str
    array: int
    partition: str | None = None
    gpus_per_task: int | None = None
    time: str | None = None  # SLURM syntax: "MM", "HH:MM:SS", "D-HH"
    mem: str | None = None  # SLURM syntax: "16G", "4000M"
    cpus_per_task: int | None = None
    datasets: tuple[str, ...] = ()
    only: str | None = None

    def __post_init__(self):
        if self.array < 1:
            raise ValueError(f"array must be >= 1 (the number of shard jobs), got {self.array}")
        for name in ("gpus_per_task", "cpus_per_task"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")

    def directives(self) -> list[str]:
        """``#SBATCH`` resource lines shared by the array and the finalising job."""
        flags = {"partition": self.partition, "gpus-per-task": self.gpus_per_task, "time": self.time,
                 "mem": self.mem, "cpus-per-task": self.cpus_per_task}
        return [f"#SBATCH --{k}={v}" for k, v in flags.items() if v is not None]


@dataclass(frozen=True)
class Submission:
    folder: Path
    array_job: str
    finalize_job: str
    split: str
    array: int
    datasets: tuple[str, ...] = ()
    only: str | None = None

    def to_dict(self) -> dict:
        return {**asdict(self), "folder": str(self.folder), "datasets": list(self.datasets)}


def _extract_cmd(opts: SubmitOptions, config: Path | None, shard: str | None) -> str:
    """The ``navcache extract`` line a job runs, with this interpreter (the job may not see the
    submitting shell's PATH)."""
    args = [sys.executable, "-m", "navcache.cli", "extract", "--split", opts.split]
    if config is not None:
        args += ["--config", str(Path(config).resolve())]
    for d in opts.datasets:
        args += ["--dataset", d]
    if opts.only:
        args += ["--only", opts.only]
    line = shlex.join(args)
    return line + (f" --shard {shard}" if shard else "")


def write_scripts(folder: Path, opts: SubmitOptions, config: Path | None, cwd: Path) -> tuple[Path, Path]:
    """The array and finalising batch scripts in ``folder``; both run in ``cwd`` (where an embedded
    demo project lives)."""
    folder.mkdir(parents=True, exist_ok=True)
    res = opts.directives()
    q = shlex.quote
    array = "\n".join([
        "#!/bin/bash",
        f"#SBATCH --job-name=navcache-{opts.split}",
        f"#SBATCH --array=0-{opts.array - 1}",
        f"#SBATCH --output={folder}/task-%a.out",
        *res,
        f"cd {q(str(cwd))}",
        "# the exit code goes to task-<i>.rc: status tells a failed task from a killed one without accounting",
        f"{_extract_cmd(opts, config, f'$SLURM_ARRAY_TASK_ID/{opts.array}')}",
        "rc=$?",
        f'echo $rc > {q(str(folder))}/task-$SLURM_ARRAY_TASK_ID.rc',
        "exit $rc",
        "",
    ])
    final = "\n".join([
        "#!/bin/bash",
        f"#SBATCH --job-name=navcache-{opts.split}-finalize",
        f"#SBATCH --output={folder}/finalize.out",
        *res,
        f"cd {q(str(cwd))}",
        f"{_extract_cmd(opts, config, None)}",
        "",
    ])
    pa, pf = folder / "array.sbatch", folder / "finalize.sbatch"
    pa.write_text(array)
    pf.write_text(final)
    return pa, pf


def sbatch(*args: str) -> str:
    """Run ``sbatch --parsable ARGS``; the job id."""
    out = run_slurm("sbatch", "--parsable", *args)
    return out.strip().split(";")[0]  # "<id>" or "<id>;<cluster>"


def run_slurm(cmd: str, *args: str, check: bool = True) -> str:
    try:
        p = subprocess.run([cmd, *args], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SlurmError(f"{cmd} not found: SLURM's client commands must be on PATH (run this on a login node)") from None
    if check and p.returncode != 0:
        raise SlurmError(f"{cmd} {' '.join(args)} failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def submit(cache_root: Path, opts: SubmitOptions, config: Path | None, cwd: Path) -> Submission:
    """Write the scripts under ``cache_root/.navcache/slurm/<stamp>/``, submit the array, then the
    finalising job depending on it (``afterok``: it starts only if every task succeeded)."""
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    folder = Path(cache_root).resolve() / SUBMISSIONS / stamp
    pa, pf = write_scripts(folder, opts, config, Path(cwd).resolve())
    array_job = sbatch(str(pa))
    finalize_job = sbatch(f"--dependency=afterok:{array_job}", str(pf))
    sub = Submission(folder, array_job, finalize_job, opts.split, opts.array, opts.datasets, opts.only)
    (folder / "submission.json").write_text(json.dumps(sub.to_dict(), indent=1))
    return sub


def load_submissions(cache_root: Path) -> list[Submission]:
    """Every submission recorded under the cache root, oldest first."""
    base = Path(cache_root) / SUBMISSIONS
    subs = []
    for f in sorted(base.glob("*/submission.json")) if base.is_dir() else ():
        d = json.loads(f.read_text())
        subs.append(Submission(Path(d["folder"]), d["array_job"], d["finalize_job"], d["split"], int(d["array"]),
                               tuple(d.get("datasets", ())), d.get("only")))
    return subs


def queue_states(job_id: str) -> dict[int | None, str]:
    """{array task id (None for a plain job): SLURM state} of the job's tasks still known to
    ``squeue`` (pending, running, completing); {} once they have all left the queue."""
    out = run_slurm("squeue", "-h", "-r", "-j", job_id, "-o", "%K|%T", check=False)
    states: dict[int | None, str] = {}
    for line in out.splitlines():
        task, _, state = line.strip().partition("|")
        if state:
            states[int(task) if task.isdigit() else None] = state
    return states


def wait_for(job_ids: list[str], timeout: float, poll: float = 1.0) -> None:
    """Block until none of ``job_ids`` is in the queue (TimeoutError after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while any(queue_states(j) for j in job_ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"SLURM jobs {', '.join(job_ids)} still queued after {timeout:.0f} s")
        time.sleep(poll)


def task_states(sub: Submission) -> list[str]:
    """Per array task: its queue state, else ``exit <rc>`` from its rc file, else ``killed`` (it
    left the queue without writing one: scancel, time limit, node failure)."""
    queued = queue_states(sub.array_job)
    out = []
    for i in range(sub.array):
        rc = sub.folder / f"task-{i}.rc"
        if i in queued:
            out.append(queued[i].lower())
        elif rc.exists():
            out.append(f"exit {rc.read_text().strip()}")
        else:
            out.append("killed")
    return out


def shard_progress(plans, n: int) -> list[dict[str, int]]:
    """Per shard ``i`` of ``n``: {"parts": new parts it owns, "built": those committed} over every
    stage plan (a dry-run plan sees the committed parts of a running array)."""
    rows = [{"parts": 0, "built": 0} for _ in range(n)]
    for sp in plans:
        for p in sp.parts:
            if p.group < 0:  # kept from the last finalised layout: no shard owns it
                continue
            row = rows[p.group % n]
            row["parts"] += 1
            row["built"] += p.state == "up-to-date"
    return rows
