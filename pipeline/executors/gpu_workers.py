"""``--executor gpus``: one dask worker process per visible GPU of this node, each pinned to its GPU.

Each worker is started with ``CUDA_VISIBLE_DEVICES`` set to its one device, so inside it the
encoders' ``device: auto`` (or ``cuda``) is that GPU and nothing else; the tasks are the dask
executor's idempotent part tasks (``dask_exec.build_one_part``), so a part is built by one worker
and committed once by atomic rename, and a worker that dies has its part rerun on another.
Decoding stays on each worker's CPU threads (``run.decode_workers``), ahead of its GPU.

With dask-cuda installed (and ``gpus.dask_cuda`` true) its ``LocalCUDACluster`` starts the
workers (it also pins CPU affinity and rotates ``CUDA_VISIBLE_DEVICES`` so that each worker's
device 0 is its own GPU); otherwise a plain ``distributed.SpecCluster`` of nannies, each with its
own environment, which is what ``LocalCUDACluster`` builds too.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Callable, Mapping

from ..errors import NavcacheError


@dataclass(frozen=True)
class GpuWorkersConfig:
    """The project file's ``gpus:`` block (``--executor gpus``)."""

    #: GPUs to use, as ``CUDA_VISIBLE_DEVICES`` names them (indices or UUIDs); empty: every
    #: visible GPU (``CUDA_VISIBLE_DEVICES``, else every GPU torch sees)
    devices: tuple[str, ...] = ()
    #: part tasks a worker runs at once (1 keeps one encoder batch per GPU at a time)
    threads_per_worker: int = 1
    #: use dask-cuda's ``LocalCUDACluster`` when it is installed
    dask_cuda: bool = True

    def __post_init__(self):
        if self.threads_per_worker < 1:
            raise ValueError(f"threads_per_worker must be >= 1, got {self.threads_per_worker}")
        if any(not str(d).strip() or "," in str(d) for d in self.devices):
            raise ValueError(f"devices must be single device names such as '0' or 'GPU-<uuid>', got {list(self.devices)}")


@dataclass(frozen=True)
class WorkerSpec:
    """One worker process: its dask name and the environment it starts with."""

    name: str
    env: dict[str, str]


def _torch_device_count() -> int:
    import torch

    return torch.cuda.device_count()


def visible_devices(environ: Mapping[str, str] | None = None, device_count: Callable[[], int] = _torch_device_count) -> tuple[str, ...]:
    """The GPUs this process may use, as names for ``CUDA_VISIBLE_DEVICES``.

    From ``CUDA_VISIBLE_DEVICES`` when set (CUDA ignores every entry from the first invalid one,
    such as "-1" or an empty one, on: so do we); else "0".."n-1" for the n GPUs torch sees.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return tuple(str(i) for i in range(device_count()))
    out: list[str] = []
    for tok in raw.split(","):
        tok = tok.strip()
        if not tok or tok.startswith("-"):
            break
        out.append(tok)
    return tuple(out)


def plan_workers(devices: tuple[str, ...]) -> list[WorkerSpec]:
    """One worker per device, its ``CUDA_VISIBLE_DEVICES`` that device alone; NavcacheError if none."""
    if not devices:
        raise NavcacheError("--executor gpus: no GPU is visible (CUDA_VISIBLE_DEVICES is empty or torch sees none); "
                            "set gpus.devices, or use --executor local or dask")
    if len(set(devices)) != len(devices):
        raise NavcacheError(f"gpus.devices names a GPU twice: {list(devices)}")
    return [WorkerSpec(f"gpu-{d}", {"CUDA_VISIBLE_DEVICES": d}) for d in devices]


def start_cluster(cfg: GpuWorkersConfig, specs: list[WorkerSpec]):
    """A local dask cluster with one worker per ``specs`` entry (dask-cuda's when installed)."""
    if cfg.dask_cuda and importlib.util.find_spec("dask_cuda") is not None:
        from dask_cuda import LocalCUDACluster

        devices = ",".join(s.env["CUDA_VISIBLE_DEVICES"] for s in specs)
        return LocalCUDACluster(CUDA_VISIBLE_DEVICES=devices, threads_per_worker=cfg.threads_per_worker,
                                dashboard_address=None, silence_logs=logging.ERROR)
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {s.name: {"cls": Nanny, "options": {"nthreads": cfg.threads_per_worker, "env": s.env, "name": s.name,
                                                    "silence_logs": logging.ERROR}}
               for s in specs}
    return SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard": False}},
                       silence_logs=logging.ERROR)


class GpuClient:
    """A dask client on one worker per GPU, started on first use (a run with nothing to build
    starts none) and closed at the end of the run; same interface as ``SlurmClient``."""

    def __init__(self, cfg: GpuWorkersConfig, environ: Mapping[str, str] | None = None):
        self.cfg = cfg
        self.specs = plan_workers(cfg.devices or visible_devices(environ))
        self._client = self._cluster = None

    def get(self):
        if self._client is None:
            from distributed import Client

            self._cluster = start_cluster(self.cfg, self.specs)
            self._client = Client(self._cluster)
            self._client.wait_for_workers(len(self.specs))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._cluster.close()
            self._client = self._cluster = None
