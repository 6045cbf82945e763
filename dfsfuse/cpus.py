"""How many CPUs this process may use (torch-free, so command-line defaults can ask cheaply)."""

from __future__ import annotations

import os


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the OS has one (``taskset``, cgroup
    cpusets, a batch scheduler's allocation), else the machine's CPU count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
