"""localfs: the file system a path is on, from mountinfo; the disk loop measures a
local state dir on the loop's thread and anything else in a worker thread."""

from __future__ import annotations

import threading
from pathlib import Path

from huselet.health.leftovers import mount_points
from huselet.health.localfs import fs_type, mounts, on_local_fs
from huselet.health.pressure import DiskPressure, DiskSample
from huselet.health.supervisor import HealthState, LoopReport

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /srv/state rw,relatime shared:7 - nfs4 server:/export rw,vers=4.2
31 30 0:41 / /srv/state/local rw - tmpfs tmpfs rw
32 22 0:42 / /srv/my\\040disk rw - xfs /dev/sdb rw
33 22 0:43 / /srv/stacked rw - nfs server:/a rw
34 22 0:44 / /srv/stacked rw - ext4 /dev/sdc rw
35 22 0:45 / /srv/fuse rw - fuse.sshfs host:/ rw
"""


def test_the_longest_mounted_prefix_decides_and_the_last_stacked_mount_wins(
    tmp_path: Path,
) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    m = str(info)
    assert mounts(m)[1] == ("/srv/state", "nfs4")
    assert fs_type(Path("/srv/state/cache"), m) == "nfs4"
    assert fs_type(Path("/srv/state/local/x"), m) == "tmpfs"
    assert fs_type(Path("/srv/statefile"), m) == "ext4"  # a sibling, not inside /srv/state
    assert fs_type(Path("/srv/my disk/x"), m) == "xfs"  # the kernel's \040 is a space
    assert fs_type(Path("/srv/stacked/y"), m) == "ext4"
    assert not on_local_fs(Path("/srv/state/cache"), m)
    assert not on_local_fs(Path("/srv/fuse/z"), m)
    assert on_local_fs(Path("/srv/state/local/x"), m)
    assert not on_local_fs(Path("/x"), str(tmp_path / "missing"))  # cannot tell: not local
    assert "/srv/my disk" in mount_points(m)


async def measured_on(path: Path, local: bool) -> list[bool]:
    """For each of three checks: did ``measure`` run on the event loop's thread?"""
    loop_thread = threading.current_thread()
    on_loop: list[bool] = []

    def measure(_: Path) -> DiskSample:
        on_loop.append(threading.current_thread() is loop_thread)
        return DiskSample(50, 100)

    class Cache:
        def refuse_installs(self, reason: str | None) -> None: ...

        def evict_unused(self) -> list[str]:
            return []

    loop = DiskPressure(
        path, Cache(), interval_s=1, enter_free_percent=5, leave_free_percent=10, measure=measure
    )
    loop._on_local_fs = lambda _: local
    report = LoopReport("disk")
    for _ in range(3):
        await loop.check(report)
    assert report.state is HealthState.OK and report.counters["samples"] == 3
    return on_loop


async def test_a_local_state_dir_is_measured_without_a_thread_trip(tmp_path: Path) -> None:
    assert await measured_on(tmp_path, local=True) == [True, True, True]
    # A network file system's statvfs may block for long: always off the loop.
    assert await measured_on(tmp_path, local=False) == [False, False, False]


def test_this_hosts_temp_dir_is_found_local_from_the_real_mountinfo(tmp_path: Path) -> None:
    assert fs_type(tmp_path) is not None
    assert on_local_fs(tmp_path)
