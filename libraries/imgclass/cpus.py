"""How many CPU cores this process may use: what sizes the pools of threads and processes; and how
much memory a cgroup memory limit leaves it.

os.cpu_count() counts the machine's cores. In a container, or under taskset, a process may use
fewer, bounded two ways: its CPU affinity (taskset, a container's cpuset) and a cgroup CPU quota
(`docker run --cpus=2`, a Kubernetes CPU limit). Threads beyond the quota make nothing faster: the
kernel throttles the whole process once it has used its share of each period.

Memory likewise: /proc/meminfo (and psutil) count the machine's, while `docker run --memory=4g` or
a Kubernetes memory limit lets the process use only that much, and the kernel's OOM killer ends it,
without a message, when it tries to use more.
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


def _cgroup_folders(controller: str, cgroup_root: Path | None, proc_cgroup: Path | None) -> list[tuple[bool, Path]]:
    """(is v2, folder) for every cgroup folder whose limits bound this process for `controller`:
    its cgroup and those above it, in the unified (v2) hierarchy and in v1's hierarchy of that
    controller. Empty without cgroups. The paths default to CGROUP_ROOT and PROC_CGROUP."""
    cgroup_root = cgroup_root or CGROUP_ROOT
    listing = _read(proc_cgroup or PROC_CGROUP)
    if listing is None:
        return []
    found: list[tuple[bool, Path]] = []
    for line in listing.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy, controllers, path = fields
        if hierarchy == "0" and controllers == "":  # the unified (v2) hierarchy
            candidates, v2 = [cgroup_root], True
        elif controller in controllers.split(","):  # v1: mounted as e.g. cpu,cpuacct, often linked as cpu
            candidates, v2 = [cgroup_root / controllers, cgroup_root / controller], False
        else:
            continue
        for base in dict.fromkeys(candidates):  # once each where the mount is named after the controller
            found.extend((v2, folder) for folder in _folders(base, path))
    return found


def cgroup_cpu_limit(cgroup_root: Path | None = None, proc_cgroup: Path | None = None) -> float | None:
    """The CPUs' worth of time a cgroup quota allows this process (2.5 for `docker run --cpus=2.5`):
    the tightest quota on its cgroup or any above it, v1 or v2; None without a quota or cgroups.
    The paths default to the kernel's, CGROUP_ROOT and PROC_CGROUP."""
    limits = [limit for v2, folder in _cgroup_folders("cpu", cgroup_root, proc_cgroup)
              if (limit := (_v2_limit if v2 else _v1_limit)(folder)) is not None]
    return min(limits) if limits else None


# cgroup v1 writes "no limit" as the largest page-aligned 64-bit value (9223372036854771712 with 4 kB
# pages); anything from 2**62 bytes (4 EiB) up is taken as that, whatever the page size.
_V1_NO_LIMIT = 1 << 62


def _int(text: str | None) -> int | None:
    try:
        return int(text or "")
    except ValueError:
        return None


def _stat(folder: Path, key: str) -> int:
    """A counter of the folder's memory.stat ("key value" lines); 0 where it is missing."""
    for line in (_read(folder / "memory.stat") or "").splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == key and (value := _int(fields[1])) is not None:
            return value
    return 0


def _memory_available(folder: Path, v2: bool) -> int | None:
    """The bytes a cgroup folder's memory limit leaves: limit minus usage; None without a limit or
    where its files cannot be read.

    Usage (memory.current, memory.usage_in_bytes) counts the page cache too: files this process and
    others in the cgroup have read or written recently, the decoded-image spill file among them.
    The kernel reclaims the inactive part of it before it considers the cgroup out of memory, so it
    is subtracted as docker stats and the kubelet's eviction do; otherwise a container that had
    read a large data set once would seem to have no memory left and spill everything to disk.
    v2's memory.stat counts the cgroup and those below it; v1's total_ counters do (inactive_file
    is the cgroup's own)."""
    if v2:
        limit_text = _read(folder / "memory.max")
        if limit_text == "max":
            return None
        limit, usage = _int(limit_text), _int(_read(folder / "memory.current"))
        inactive = _stat(folder, "inactive_file")
    else:
        limit, usage = _int(_read(folder / "memory.limit_in_bytes")), _int(_read(folder / "memory.usage_in_bytes"))
        if limit is not None and limit >= _V1_NO_LIMIT:
            return None
        inactive = _stat(folder, "total_inactive_file")
    if limit is None or usage is None or limit < 0:
        return None
    return max(0, limit - max(0, usage - inactive))


def cgroup_memory_available(cgroup_root: Path | None = None, proc_cgroup: Path | None = None) -> int | None:
    """The bytes of memory a cgroup memory limit still leaves this process (`docker run --memory`,
    a Kubernetes memory limit): the least that the limit, less the usage not counting reclaimable
    page cache, leaves on its cgroup or any above it, v1 (memory.limit_in_bytes) or v2
    (memory.max); None without a limit or cgroups. The paths default to CGROUP_ROOT and PROC_CGROUP."""
    left = [available for v2, folder in _cgroup_folders("memory", cgroup_root, proc_cgroup)
            if (available := _memory_available(folder, v2)) is not None]
    return min(left) if left else None


class OutOfMemoryAdvice(RuntimeError):
    """A stage ran out of memory; the message says which parameters to lower. Every stage reports it
    as one line (imgclass.cli), whichever step ran out: refining, featurizing, scoring."""


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
