"""Thread counts that never oversubscribe a shared machine.

Researchers run ncbounds on shared cluster nodes and laptops. Torch's default is one intra-op thread
per hardware core, and its OpenMP threads *spin* while they wait: on a machine whose cores are also
busy with something else a spinning thread steals the time its partner needs, and small operations
became 10–30× slower than with one thread (measured on this project's 2-core machines). Two rules:

* **How many threads.** :func:`available_cores` counts the cores this process may run on — the CPU
  affinity mask (``os.sched_getaffinity``; taskset, SLURM, containers) capped by a cgroup CPU quota
  (``cpu.max`` of cgroup v2, ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` of v1, rounded up) — and
  :func:`default_threads` divides them among the ``--jobs`` worker processes (at least one each).
  ``--threads N`` (``threads=N`` in the API) overrides it for each evaluation or worker.
* **How threads wait.** :func:`configure_wait_policy` sets ``OMP_WAIT_POLICY=PASSIVE`` (waiting
  OpenMP threads sleep instead of spinning) — only when the user has not set it and only before torch
  is imported (OpenMP reads it once, when it starts). The command line calls it first thing; the
  Python API calls it when ``ncbounds`` is imported before torch.

:func:`use_threads` applies a count to torch for the duration of a block and restores it; the record's
``provenance.threads`` says how many were used.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from pathlib import Path

__all__ = ["available_cores", "cgroup_cpu_limit", "configure_wait_policy", "default_threads", "use_threads"]

WAIT_POLICY_VARIABLE = "OMP_WAIT_POLICY"


def configure_wait_policy() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless it is set or torch is already imported; True when it was set."""
    if WAIT_POLICY_VARIABLE in os.environ or "torch" in sys.modules:
        return False
    os.environ[WAIT_POLICY_VARIABLE] = "PASSIVE"
    return True


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: str | os.PathLike = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in cores (e.g. 1.5), or None when there is no limit."""
    base = Path(root)
    line = _read(base / "cpu.max")  # cgroup v2: "max 100000" or "150000 100000"
    if line:
        quota, _, period = line.partition(" ")
        if quota != "max" and period:
            return int(quota) / int(period)
        return None
    quota, period = _read(base / "cpu" / "cpu.cfs_quota_us"), _read(base / "cpu" / "cpu.cfs_period_us")  # v1
    if quota and period and int(quota) > 0:
        return int(quota) / int(period)
    return None


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by the cgroup quota (rounded up); at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return max(1, cores)


def default_threads(jobs: int = 1) -> int:
    """Threads per evaluation when ``jobs`` of them run at once: the available cores divided among them."""
    return max(1, available_cores() // max(1, int(jobs)))


@contextlib.contextmanager
def use_threads(count: int):
    """Run the block with ``count`` torch intra-op threads; the previous count is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(count)))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
