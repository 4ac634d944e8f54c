"""How many CPU cores this process may use: what sizes the pools of threads and processes.

os.cpu_count() counts the machine's cores. In a container, or under taskset, a process may use
fewer, bounded two ways: its CPU affinity (taskset, a container's cpuset) and a cgroup CPU quota
(`docker run --cpus=2`, a Kubernetes CPU limit). Threads beyond the quota make nothing faster: the
kernel throttles the whole process once it has used its share of each period.
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _v2_limit(folder: Path) -> float | None:
    """cpu.max of cgroup v2: "QUOTA PERIOD" in microseconds, QUOTA "max" for none."""
    text = _read(folder / "cpu.max")
    if not text:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_limit(folder: Path) -> float | None:
    """cpu.cfs_quota_us / cpu.cfs_period_us of cgroup v1 (quota -1 for none)."""
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _folders(base: Path, path: str) -> list[Path]:
    """The cgroup folder of `path` under `base` and every folder above it, up to `base`: a limit on
    a parent cgroup bounds its children. Inside a container the path /proc names may not exist in
    the container's view, whose own cgroup is then mounted at `base` itself."""
    parts = [p for p in path.split("/") if p]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def cgroup_cpu_limit(cgroup_root: Path | None = None, proc_cgroup: Path | None = None) -> float | None:
    """The CPUs' worth of time a cgroup quota allows this process (2.5 for `docker run --cpus=2.5`):
    the tightest quota on its cgroup or any above it, v1 or v2; None without a quota or cgroups.
    The paths default to the kernel's, CGROUP_ROOT and PROC_CGROUP."""
    cgroup_root = cgroup_root or CGROUP_ROOT
    listing = _read(proc_cgroup or PROC_CGROUP)
    if listing is None:
        return None
    limits: list[float] = []
    for line in listing.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy, controllers, path = fields
        if hierarchy == "0" and controllers == "":  # the unified (v2) hierarchy
            candidates, read = [(cgroup_root, path)], _v2_limit
        elif "cpu" in controllers.split(","):  # v1: mounted as cpu,cpuacct, often linked as cpu
            candidates, read = [(cgroup_root / controllers, path), (cgroup_root / "cpu", path)], _v1_limit
        else:
            continue
        for base, p in candidates:
            for folder in _folders(base, p):
                if (limit := read(folder)) is not None:
                    limits.append(limit)
    return min(limits) if limits else None


def omp_thread_limit() -> int | None:
    """OMP_NUM_THREADS as a positive number ("4,2", nested levels: the outer 4); None when unset or not a number."""
    text = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def usable_cpus() -> int:
    """The cores this process may use: its CPU affinity (os.cpu_count() where the platform has none:
    macOS, Windows), and no more than a cgroup CPU quota allows, rounded down, nor than
    OMP_NUM_THREADS says (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, int(limit))
    # OMP_NUM_THREADS is how people share a machine between numerical jobs; torch.set_num_threads and
    # the pools sized from this function would otherwise take every core whatever it says.
    if (omp := omp_thread_limit()) is not None:
        cores = min(cores, omp)
    return max(1, cores)
