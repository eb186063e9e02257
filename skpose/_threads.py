"""How many threads torch uses, and how its idle OpenMP threads wait.

Importing this module (``import skpose`` does, before torch) sets
``OMP_WAIT_POLICY=PASSIVE`` unless the environment already chooses a wait policy
(``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME``): torch's OpenMP runtime
(libgomp in the CPU wheels) otherwise spins at every barrier, waiting for a thread that
other processes keep off its core. On the 2-core development VM, loaded by other work
(and by one ``yes`` per core), an epoch of the README's training with 2 threads took
113 s (428 s) spinning and 16-22 s (18-23 s) passive; 1 passive thread took 11-12 s
(27-28 s): ``benchmarks/threads.py``, figures in ``benchmarks/README.md``. The policy
is read once, when torch's OpenMP runtime loads: it has no effect on a process that
imported torch before skpose.

:func:`default_threads` is the thread count of the command line unless ``--threads``
says otherwise: ``OMP_NUM_THREADS`` when set, else :func:`available_cpus`, the CPUs
this process may run on, capped by a cgroup CPU quota (containers and batch schedulers
often grant fewer CPUs than the affinity mask shows, and torch's own default ignores
the quota).
It does not look at the machine's load: the thread count changes the rounding of
training (not of the network's predictions), so a load-dependent default would make
results depend on what else runs; and with threads that sleep, neither 1 nor 2
threads won on both the quiet and the loaded VM.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cpus", "default_threads", "set_threads"]

# The variables by which a user already chose how OpenMP threads wait (GNU, Intel/LLVM).
_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
_CGROUP = Path("/sys/fs/cgroup")


def _set_wait_policy() -> None:
    if not any(name in os.environ for name in _WAIT_VARIABLES):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def _cgroup_cpu_quota(root: Path = _CGROUP) -> float | None:
    """CPUs granted by the cgroup's CPU quota (v2 ``cpu.max``, v1 CFS), or None."""
    try:
        if (root / "cpu.max").is_file():
            quota, period = (root / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = root / "cpu"
        if (v1 / "cpu.cfs_quota_us").is_file():
            quota = int((v1 / "cpu.cfs_quota_us").read_text())
            period = int((v1 / "cpu.cfs_period_us").read_text())
            return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None
    return None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota.

    Returns
    -------
    int
        At least 1. ``len(os.sched_getaffinity(0))`` (``os.cpu_count()`` where the
        platform has no affinity masks), at most the quota's whole CPUs.

    Examples
    --------
    >>> available_cpus() >= 1
    True
    """
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        n = min(n, math.floor(quota))
    return max(1, n)


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set to a count, else :func:`available_cpus`.

    Returns
    -------
    int
        At least 1.
    """
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    return available_cpus()


def set_threads(n_threads: int | None = None) -> int:
    """Set torch's intra-op thread count.

    Parameters
    ----------
    n_threads : int or None, default None
        Threads (>= 1); None: :func:`default_threads` (``OMP_NUM_THREADS`` when set,
        else the CPUs this process may use).

    Returns
    -------
    int
        The thread count set.

    Raises
    ------
    ValueError
        When ``n_threads`` is not None or an int >= 1.
    """
    import torch

    if n_threads is None:
        n_threads = default_threads()
    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1:
        raise ValueError(
            f"Expected 'n_threads' to be None or an int >= 1, got {n_threads!r}."
        )
    torch.set_num_threads(n_threads)
    return n_threads


_set_wait_policy()
