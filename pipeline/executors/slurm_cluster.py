"""``--executor slurm``: the dask executor's part tasks on workers that SLURM places.

dask-jobqueue's ``SLURMCluster`` submits each worker as a SLURM job (``sbatch``) that connects back
to a scheduler in the submitting process; the tasks are the dask executor's (``build_one_part``),
so a worker job cancelled mid-part has its task rerun on another worker and the part is committed
once, by atomic rename. The cluster is started on the first stage with work and closed at the end
of the run, so a run with nothing to build submits no job.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class SlurmClusterConfig:
    """The project file's ``slurm:`` block (or ``--cluster KEY=VALUE``): one SLURM job per worker
    process group, as dask-jobqueue's ``SLURMCluster`` takes them."""

    cores: int = 1  # per job; the job's worker threads, split among its processes
    memory: str = "4GB"  # per job, dask syntax ("16GB")
    processes: int = 1  # worker processes per job
    walltime: str = "01:00:00"
    queue: str | None = None  # the SLURM partition; None: the cluster's default
    job_extra_directives: tuple[str, ...] = ()  # e.g. ["--gpus-per-task=1", "--account=proj"]
    job_name: str = "navcache-worker"

    def __post_init__(self):
        if self.cores < 1 or self.processes < 1:
            raise ValueError("cores and processes must be >= 1")
        if self.processes > self.cores:
            raise ValueError(f"processes ({self.processes}) must not exceed cores ({self.cores}): each process needs a thread")


class SlurmClient:
    """A dask client on a ``SLURMCluster`` of ``jobs`` worker jobs, started on first use; the jobs'
    output goes to ``log_directory``."""

    def __init__(self, cfg: SlurmClusterConfig, jobs: int, log_directory: str | None = None):
        self.cfg, self.jobs, self.log_directory = cfg, jobs, log_directory
        self._client = self._cluster = None

    def get(self):
        if self._client is None:
            from dask.distributed import Client
            from dask_jobqueue import SLURMCluster

            c = self.cfg
            self._cluster = SLURMCluster(
                cores=c.cores, memory=c.memory, processes=c.processes, walltime=c.walltime, queue=c.queue,
                job_extra_directives=list(c.job_extra_directives), job_name=c.job_name,
                python=sys.executable,  # the jobs run this environment's navcache
                log_directory=self.log_directory,  # not slurm-<id>.out in whatever folder we were started from
                silence_logs="error", dashboard_address=None,
            )
            self._cluster.scale(jobs=self.jobs)
            self._client = Client(self._cluster)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._cluster.close()  # cancels the worker jobs (scancel)
            self._client = self._cluster = None
