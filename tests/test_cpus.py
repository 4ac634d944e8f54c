"""The cores a process may use: CPU affinity and a cgroup CPU quota (docker --cpus, Kubernetes limits);
and the memory a cgroup memory limit leaves it (docker --memory, Kubernetes limits).

The cgroup files are written here as the kernel lays them out, since a test cannot give itself a
quota; the parsing and the walk up the hierarchy are the real code's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imgclass.cpus import cgroup_cpu_limit, cgroup_memory_available, usable_cpus


def _tree(root: Path, files: dict[str, str], proc_cgroup: str) -> tuple[Path, Path]:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text + "\n")
    listing = root / "proc_self_cgroup"
    listing.write_text(proc_cgroup)
    return root / "sys_fs_cgroup", listing


def test_cgroup_v2_quota_as_docker_cpus_writes_it(tmp_path: Path) -> None:
    # `docker run --cpus=2.5`, cgroup namespace: the container's own cgroup is the mount's root.
    root, listing = _tree(tmp_path, {"sys_fs_cgroup/cpu.max": "250000 100000"}, "0::/\n")
    assert cgroup_cpu_limit(root, listing) == 2.5


def test_cgroup_v2_without_a_quota(tmp_path: Path) -> None:
    root, listing = _tree(tmp_path, {"sys_fs_cgroup/cpu.max": "max 100000"}, "0::/\n")
    assert cgroup_cpu_limit(root, listing) is None


def test_cgroup_v2_the_tightest_limit_on_the_way_up_counts(tmp_path: Path) -> None:
    # A pod limited to 1.5 CPUs, its container without a limit of its own (Kubernetes, no namespace).
    root, listing = _tree(tmp_path, {
        "sys_fs_cgroup/kubepods/pod1/cpu.max": "150000 100000",
        "sys_fs_cgroup/kubepods/pod1/ctr/cpu.max": "max 100000",
        "sys_fs_cgroup/kubepods/cpu.max": "800000 100000",
    }, "0::/kubepods/pod1/ctr\n")
    assert cgroup_cpu_limit(root, listing) == 1.5


def test_cgroup_v1_quota_and_no_quota(tmp_path: Path) -> None:
    v1 = "12:cpu,cpuacct:/docker/abc\n11:memory:/docker/abc\n"
    root, listing = _tree(tmp_path, {"sys_fs_cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1",
                                     "sys_fs_cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000"}, v1)
    assert cgroup_cpu_limit(root, listing) is None
    (root / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("50000\n")  # --cpus=0.5, seen at the mount's root
    assert cgroup_cpu_limit(root, listing) == 0.5


def test_no_cgroups_at_all(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path / "none", tmp_path / "no_such_file") is None
    root, listing = _tree(tmp_path, {"sys_fs_cgroup/cpu.max": "garbage"}, "0::/\n")
    assert cgroup_cpu_limit(root, listing) is None


def test_usable_cpus_is_the_affinity_bounded_by_the_quota(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import imgclass.cpus as cpus

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    root, listing = _tree(tmp_path, {"sys_fs_cgroup/cpu.max": "50000 100000"}, "0::/\n")
    monkeypatch.setattr(cpus, "CGROUP_ROOT", root)
    monkeypatch.setattr(cpus, "PROC_CGROUP", listing)
    assert usable_cpus() == 1  # half a CPU: one thread, never zero
    (root / "cpu.max").write_text(f"{(affinity + 3) * 100000} 100000\n")
    assert usable_cpus() == affinity  # a quota above the cores allowed changes nothing


def test_usable_cpus_keeps_to_omp_num_threads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import imgclass.cpus as cpus

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    monkeypatch.setattr(cpus, "PROC_CGROUP", tmp_path / "no_such_file")  # no quota
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert usable_cpus() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1,4")  # nested levels: the outer one counts
    assert usable_cpus() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(affinity + 5))  # more than the cores: the cores
    assert usable_cpus() == affinity
    for ignored in ("", "0", "many"):
        monkeypatch.setenv("OMP_NUM_THREADS", ignored)
        assert usable_cpus() == affinity


# -- memory ------------------------------------------------------------------------------------------

GB = 1 << 30
MB = 1 << 20
V1_NO_LIMIT = "9223372036854771712"  # what cgroup v1 writes for "no limit" with 4 kB pages


def _v2_stat(inactive_file: int) -> str:
    # A real memory.stat's neighbours, so that the right line has to be picked.
    return (f"anon {300 * MB}\nfile {900 * MB}\nkernel {10 * MB}\nactive_anon {300 * MB}\n"
            f"inactive_anon 0\nactive_file {100 * MB}\ninactive_file {inactive_file}\n"
            f"workingset_refault_file 0\n")


def test_cgroup_v2_memory_limit_less_usage_less_reclaimable_page_cache(tmp_path: Path) -> None:
    # `docker run --memory=4g`, cgroup namespace: 1 GB used, of which 256 MB inactive page cache.
    root, listing = _tree(tmp_path, {"sys_fs_cgroup/memory.max": str(4 * GB),
                                     "sys_fs_cgroup/memory.current": str(GB),
                                     "sys_fs_cgroup/memory.stat": _v2_stat(256 * MB)}, "0::/\n")
    assert cgroup_memory_available(root, listing) == 4 * GB - (GB - 256 * MB)
    (root / "memory.stat").unlink()  # without memory.stat, all of the usage counts
    assert cgroup_memory_available(root, listing) == 3 * GB
    (root / "memory.current").write_text(f"{5 * GB}\n")  # above the limit (briefly possible): nothing left
    assert cgroup_memory_available(root, listing) == 0


def test_cgroup_v2_memory_max_means_no_limit(tmp_path: Path) -> None:
    root, listing = _tree(tmp_path, {"sys_fs_cgroup/memory.max": "max",
                                     "sys_fs_cgroup/memory.current": str(GB),
                                     "sys_fs_cgroup/memory.stat": _v2_stat(0)}, "0::/\n")
    assert cgroup_memory_available(root, listing) is None


def test_cgroup_v2_memory_the_tightest_on_the_way_up_counts(tmp_path: Path) -> None:
    # A pod limited to 2 GB, of which its other containers use 1.5 GB; this container may use 3 GB
    # and uses 200 MB (Kubernetes, no cgroup namespace).
    root, listing = _tree(tmp_path, {
        "sys_fs_cgroup/kubepods/pod1/ctr/memory.max": str(3 * GB),
        "sys_fs_cgroup/kubepods/pod1/ctr/memory.current": str(200 * MB),
        "sys_fs_cgroup/kubepods/pod1/memory.max": str(2 * GB),
        "sys_fs_cgroup/kubepods/pod1/memory.current": str(1536 * MB),
        "sys_fs_cgroup/kubepods/pod1/memory.stat": _v2_stat(36 * MB),
        "sys_fs_cgroup/kubepods/memory.max": "max",
        "sys_fs_cgroup/kubepods/memory.current": str(40 * GB),
    }, "0::/kubepods/pod1/ctr\n")
    assert cgroup_memory_available(root, listing) == 2 * GB - (1536 - 36) * MB
    (root / "kubepods/pod1/ctr/memory.max").write_text(f"{300 * MB}\n")  # now the container's own is tighter
    assert cgroup_memory_available(root, listing) == 100 * MB


def test_cgroup_v1_memory_limit_and_no_limit(tmp_path: Path) -> None:
    # Docker on cgroup v1, no namespace: the container's cgroup is mounted at the hierarchy's root.
    v1 = "12:cpu,cpuacct:/docker/abc\n11:memory:/docker/abc\n0::/system.slice/docker.service\n"
    root, listing = _tree(tmp_path, {
        "sys_fs_cgroup/memory/memory.limit_in_bytes": V1_NO_LIMIT,
        "sys_fs_cgroup/memory/memory.usage_in_bytes": str(1536 * MB),
        # inactive_file is the cgroup's own, total_inactive_file its and its children's, as usage is.
        "sys_fs_cgroup/memory/memory.stat": f"cache {GB}\nrss {512 * MB}\ninactive_file {8 * MB}\n"
                                            f"active_file {GB}\nhierarchical_memory_limit {V1_NO_LIMIT}\n"
                                            f"total_inactive_file {512 * MB}\ntotal_active_file {GB}\n",
    }, v1)
    assert cgroup_memory_available(root, listing) is None
    (root / "memory" / "memory.limit_in_bytes").write_text(f"{2 * GB}\n")  # --memory=2g
    assert cgroup_memory_available(root, listing) == 2 * GB - (1536 - 512) * MB


def test_cgroup_v1_memory_the_tightest_on_the_way_up_counts(tmp_path: Path) -> None:
    # The host's view: a parent cgroup limits all of its containers together.
    v1 = "11:memory:/batch/job7\n"
    root, listing = _tree(tmp_path, {
        "sys_fs_cgroup/memory/batch/job7/memory.limit_in_bytes": str(8 * GB),
        "sys_fs_cgroup/memory/batch/job7/memory.usage_in_bytes": str(GB),
        "sys_fs_cgroup/memory/batch/memory.limit_in_bytes": str(6 * GB),
        "sys_fs_cgroup/memory/batch/memory.usage_in_bytes": str(5 * GB),
        "sys_fs_cgroup/memory/memory.limit_in_bytes": V1_NO_LIMIT,
        "sys_fs_cgroup/memory/memory.usage_in_bytes": str(50 * GB),
    }, v1)
    assert cgroup_memory_available(root, listing) == GB


def test_no_memory_limit_where_the_files_are_missing_or_unreadable(tmp_path: Path) -> None:
    assert cgroup_memory_available(tmp_path / "none", tmp_path / "no_such_file") is None
    # The CPU controller's files only; a limit without its usage; garbage.
    root, listing = _tree(tmp_path, {"sys_fs_cgroup/cpu.max": "max 100000"}, "0::/\n")
    assert cgroup_memory_available(root, listing) is None
    (root / "memory.max").write_text(f"{GB}\n")
    assert cgroup_memory_available(root, listing) is None
    (root / "memory.current").write_text("garbage\n")
    assert cgroup_memory_available(root, listing) is None
    (root / "memory.current").write_text(f"{MB}\n")
    assert cgroup_memory_available(root, listing) == GB - MB  # the same tree, complete, is read
    # v1 listed, but no memory hierarchy mounted (only cpu).
    root1, listing1 = _tree(tmp_path / "v1", {"sys_fs_cgroup/cpu/memory.limit_in_bytes": str(GB),
                                              "sys_fs_cgroup/cpu/memory.usage_in_bytes": "0"},
                            "12:cpu:/\n11:memory:/docker/abc\n")
    assert cgroup_memory_available(root1, listing1) is None
