"""The cores a process may use: CPU affinity and a cgroup CPU quota (docker --cpus, Kubernetes limits).

The cgroup files are written here as the kernel lays them out, since a test cannot give itself a
quota; the parsing and the walk up the hierarchy are the real code's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imgclass.cpus import cgroup_cpu_limit, usable_cpus


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
