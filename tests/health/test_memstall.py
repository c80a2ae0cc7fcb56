"""The kernel's memory stall trigger (PSI): armed on this kernel, and a report snaps a
quiet node's loops back to their 1 s tick.

A real stall cannot be made on demand in a test, so the wake-up path is driven
by another real source of ``POLLPRI``: TCP urgent data on a loopback socket.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from functools import partial

import pytest
import trio
import trio.testing

from huselet.health.memstall import PSI_MEMORY, MemoryStalls, open_psi_trigger
from huselet.health.supervisor import LoopReport
from huselet.timegrid import GridTimer

WAIT_S = 30.0


async def run_until(
    loop: MemoryStalls, report: LoopReport, done: Callable[[], bool], *, poke: Callable[[], None]
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(loop.run, report)
        with trio.fail_after(WAIT_S):
            while not loop.armed and "no memory stall trigger" not in report.detail:
                await trio.sleep(0.01)
            poke()
            while not done():
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_the_trigger_arms_on_this_kernel() -> None:
    if not os.path.exists(PSI_MEMORY):
        pytest.skip("this kernel has no PSI")
    try:
        os.close(open_psi_trigger())
    except PermissionError:
        pytest.skip("no permission to write a PSI trigger here")
    loop, report = MemoryStalls(), LoopReport("memory_stalls")
    await run_until(loop, report, lambda: report.detail.startswith("armed"), poke=lambda: None)


async def test_a_reported_stall_snaps_a_quiet_node_back() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = socket.create_connection(server.getsockname())
        receiver, _ = server.accept()
    with sender, receiver:
        timer = GridTimer.current()
        timer.configure_idle(tick_s=3600.0, after_s=0.0)  # quiet at once, an hour's tick
        loop = MemoryStalls(lambda: os.dup(receiver.fileno()))
        report = LoopReport("memory_stalls")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(timer.sleep_on_grid, 1.0, stretch=True))  # on the idle tick
            await trio.testing.wait_all_tasks_blocked()
            assert timer.stretched == 1

            def stall() -> None:  # urgent data: POLLPRI, as a fired PSI trigger signals
                sender.send(b"!", socket.MSG_OOB)

            await run_until(loop, report, lambda: report.counters["stalls"] >= 1, poke=stall)
            assert timer.snap_backs >= 1 and timer.stretched == 0
            nursery.cancel_scope.cancel()


async def test_without_psi_the_loop_says_so_and_waits() -> None:
    def missing() -> int:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", PSI_MEMORY)

    loop, report = MemoryStalls(missing), LoopReport("memory_stalls")
    await run_until(
        loop, report, lambda: "no memory stall trigger" in report.detail, poke=lambda: None
    )
    assert not loop.armed
