"""Two daemons on one host never touch each other's sandboxes (issue 11, finding 9).

Both real daemons use the ``fork`` runtime with cgroups and the *same*
``cgroup_parent`` and node id; only their state and run dirs differ. One is
SIGKILLed and restarted: its start-up sweep must clear its own leftovers and
nothing of the other's — the other's instances and zygote stay alive and
keep serving. And a zygote killed (and its cgroup removed) from outside, as
the old sweep did to the other daemon, is rebuilt: the daemon never exits.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from daemon_harness import Daemon, pid_alive, wait_until, write_config
from runtime.sandbox_support import UID_BASE, cgroup_leftovers, describe_pids, host_problem
from support import write_package

from huselet.runtime.cgroups import Cgroup, CgroupHost

pytestmark = pytest.mark.e2e

HANDLER = """
import os
def handler(event, context):
    return {"pid": os.getpid()}
"""


def _config(root: Path, home: Path, parent: str, uid_base: int) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    pkg = write_package(root / "pkgs", "fn", HANDLER)
    return write_config(
        home,
        f"""
        [runtimes.fork]
        cgroup_parent = "{parent}"
        uid_base = {uid_base}
        cgroup_pool = 4

        [[functions]]
        name = "fn"
        package = "{pkg}"
        handler = "main:handler"
        runtime = "fork"
        memory_mb = 128
        """,
    )


def _serves(daemon: Daemon) -> None:
    reply = daemon.invoke("fn", {})
    assert reply.status_code == 200, reply.text


@pytest.fixture
def sandbox_host() -> None:
    problem = host_problem()
    if problem:
        pytest.skip(f"host cannot sandbox: {problem}")


def test_restarting_one_daemon_leaves_the_other_untouched(
    short_tmp: Path, sandbox_host: None
) -> None:
    parent = f"huselet-test-{short_tmp.name}"
    config_a = _config(short_tmp, short_tmp / "a", parent, UID_BASE)
    config_b = _config(short_tmp, short_tmp / "b", parent, UID_BASE + 1000)
    with Daemon(config_a) as a:
        _serves(a)
        a_pids = a.instance_pids() + list(a.zygote_pids())
        assert len(a_pids) >= 2
        b = Daemon(config_b)
        try:
            _serves(b)
            b_pids = b.instance_pids() + list(b.zygote_pids())
        finally:
            b.kill()  # SIGKILL: no cleanup; the restart's sweep must do it
        b.wait(10)
        with Daemon(config_b) as b_again:
            _serves(b_again)
            assert wait_until(lambda: not any(pid_alive(p) for p in b_pids)), describe_pids(
                [p for p in b_pids if pid_alive(p)]
            )
            # The other daemon lost nothing: same processes, still serving.
            assert all(pid_alive(p) for p in a_pids), describe_pids(a_pids)
            a_instances = a.instance_pids()
            assert set(a_instances) <= set(a_pids)
            _serves(a)
            assert a.instance_pids() == a_instances  # served by the instance it had
            assert a.proc.poll() is None
    assert wait_until(lambda: cgroup_leftovers(short_tmp) == []), cgroup_leftovers(short_tmp)


def test_a_zygote_killed_and_its_cgroup_removed_from_outside_is_rebuilt(
    short_tmp: Path, sandbox_host: None
) -> None:
    parent = f"huselet-test-{short_tmp.name}"
    config = _config(short_tmp, short_tmp / "a", parent, UID_BASE)
    host = CgroupHost.detect()
    assert host is not None
    with Daemon(config) as daemon:
        _serves(daemon)
        zygotes = daemon.zygote_pids()  # the function's zygote
        assert zygotes
        # What another daemon's sweep did: kill everything in the zygote's group
        # and remove the group, so the rebuild's pre-exec hook cannot join it.
        root = next(iter(host.roots.values()))
        group_dirs = [
            Path(d) for d, _, _ in os.walk(root / parent) if Path(d).name.startswith("z-fn-")
        ]
        assert group_dirs

        def kill_and_remove(group: Cgroup) -> bool:
            """One round of the old sweep: kill every member, try to rmdir (all hierarchies)."""
            for pid in group.pids():
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            group.remove_quietly()
            return not any(d.exists() for d in group.dirs.values())

        for group_dir in group_dirs:
            group = Cgroup(host, os.path.relpath(group_dir, root))
            # The daemon rebuilds a dead zygote at once: repeat until the group is gone.
            assert wait_until(lambda g=group: kill_and_remove(g))
        assert wait_until(lambda: not any(pid_alive(z) for z in zygotes))
        # The daemon stays up and serves again from a rebuilt zygote.
        assert wait_until(lambda: daemon.invoke("fn", {}).status_code == 200, 30), daemon.lines[
            -20:
        ]
        assert daemon.proc.poll() is None

        def rebuilt() -> bool:
            now = daemon.zygote_pids()
            return bool(now) and not now & set(zygotes)

        # Its warm instance may have served that: the rebuilt zygote comes in its time.
        assert wait_until(rebuilt, 30), (zygotes, daemon.zygote_pids())
    assert wait_until(lambda: cgroup_leftovers(short_tmp) == []), cgroup_leftovers(short_tmp)
