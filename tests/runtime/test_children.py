"""StrayReaper: zombie children nobody claims are reaped on the second sweep in a
row, claimed ones never; a sweep with no zombie at all is answered by the kernel
without listing the children (an idle node with thousands of instances)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from huselet.runtime import children
from huselet.runtime.children import StrayReaper, has_zombie_child

GUARD_S = 30  # hang guard, not a timing assertion


def exited_child() -> int:
    """A child that exited at once and is left unreaped (a zombie)."""
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    deadline = time.monotonic() + GUARD_S
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.01)
    return pid


def is_our_child(pid: int) -> bool:
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def test_an_unclaimed_zombie_is_reaped_on_the_second_sweep() -> None:
    pid = exited_child()
    assert has_zombie_child()
    reaper = StrayReaper()
    assert reaper.sweep(set()) == 0  # first sight: its owner may be about to reap it
    assert is_our_child(pid)
    assert reaper.sweep(set()) == 1
    assert not is_our_child(pid)


def test_a_claimed_zombie_is_left_to_its_owner() -> None:
    pid = exited_child()
    reaper = StrayReaper()
    try:
        for _ in range(3):
            reaper.sweep({pid})
        assert is_our_child(pid)
    finally:
        os.waitpid(pid, 0)


PROBE = """
import os, time
from huselet.runtime import children
from huselet.runtime.children import StrayReaper, has_zombie_child
reaper = StrayReaper()
print(has_zombie_child())  # no children at all
pid = os.fork()
if pid == 0:
    os._exit(0)
while open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
    time.sleep(0.01)
print(has_zombie_child(), reaper.sweep(set()), len(reaper._seen))
os.waitpid(pid, 0)  # its owner reaped it after all
print(has_zombie_child(), reaper.sweep(set()), len(reaper._seen))
"""


def test_has_zombie_child_peeks_without_reaping() -> None:
    # In a fresh interpreter: this test process may have other children.
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=GUARD_S, check=True
    ).stdout.split("\n")
    assert out[:3] == ["False", "True 0 1", "False 0 0"]


def test_is_our_child_by_pidfd_tells_children_from_others_and_reaps_nothing() -> None:
    pid = exited_child()  # a zombie: still our child until reaped
    pidfd = os.pidfd_open(pid)
    try:
        assert children.is_our_child(pidfd)
        assert is_our_child(pid)  # WNOWAIT: it is still there to be reaped
    finally:
        os.close(pidfd)
        os.waitpid(pid, 0)
    parent = os.pidfd_open(os.getppid())  # alive, and not our child
    try:
        assert not children.is_our_child(parent)
    finally:
        os.close(parent)
