"""The CPU cores this process may run on (sizes the thread pools that read, hash and probe files)."""
from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores in the process's affinity mask (a SLURM job's allocation, ``taskset``), else all."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
