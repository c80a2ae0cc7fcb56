"""cgroup detection from mountinfo (pure v2, hybrid v1) and the seccomp program shape,
without touching the host: synthetic files only."""

from __future__ import annotations

from pathlib import Path

from huselet.runtime.cgroups import CgroupHost
from huselet.sandbox import seccomp

V2 = "30 23 0:26 / {root} rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw\n"
V1 = (
    "25 24 0:22 / {root}/memory rw,relatime - cgroup cgroup rw,memory\n"
    "26 24 0:23 / {root}/pids rw,relatime - cgroup cgroup rw,pids\n"
    "27 24 0:24 / {root}/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
    "28 24 0:25 / {root}/unified rw,relatime - cgroup2 cgroup2 rw\n"
)


def test_pure_v2_is_detected_when_it_has_the_controllers(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    info = tmp_path / "mountinfo"
    info.write_text(V2.format(root=tmp_path))
    host = CgroupHost.detect(str(info))
    assert host is not None and host.version == 2 and host.missing() == []
    assert host.roots == {"unified": tmp_path}


def test_hybrid_uses_v1_when_v2_holds_no_controllers(tmp_path: Path) -> None:
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("\n")
    info = tmp_path / "mountinfo"
    info.write_text(V1.format(root=tmp_path))
    host = CgroupHost.detect(str(info))
    assert host is not None and host.version == 1 and host.missing() == []
    assert host.roots["cpu"] == tmp_path / "cpu,cpuacct"


def test_missing_controllers_are_named(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(V1.format(root=tmp_path).splitlines()[0] + "\n")
    host = CgroupHost.detect(str(info))
    assert host is not None and host.missing() == ["pids", "cpu"]


def test_seccomp_programs_are_whole_instructions_with_reachable_jumps() -> None:
    for program in (seccomp.instance_filter(), seccomp.zygote_filter()):
        assert len(program) % 8 == 0 and len(program) // 8 < 256
    assert len(seccomp.zygote_filter()) < len(seccomp.instance_filter())
