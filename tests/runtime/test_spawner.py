"""SpawnThread: blocking spawns run on one long-lived thread, never the Trio thread,
and children tied to it by PR_SET_PDEATHSIG live exactly as long as it does."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading

import pytest
import trio

from huselet.runtime.spawner import SpawnThread

_libc = ctypes.CDLL(None, use_errno=True)


def _pdeathsig() -> None:
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


async def test_jobs_run_on_one_dedicated_thread_and_errors_come_back() -> None:
    spawner = SpawnThread()
    spawner.start()
    try:
        names = [await spawner.run(lambda: threading.current_thread().name) for _ in range(3)]
        assert names == ["huselet-spawner"] * 3
        assert threading.current_thread().name != "huselet-spawner"
        with pytest.raises(ZeroDivisionError):
            await spawner.run(lambda: 1 // 0)
    finally:
        spawner.stop()
    with pytest.raises(RuntimeError, match="not running"):
        await spawner.run(lambda: None)


async def test_a_cancelled_caller_still_gets_its_child() -> None:
    spawner = SpawnThread()
    spawner.start()
    release = threading.Event()
    got: list[int] = []

    async def caller() -> None:
        got.append(await spawner.run(lambda: release.wait(30) and 42))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()  # shielded: the job's result still arrives
            release.set()
        assert got == [42]
    finally:
        spawner.stop()


async def test_children_die_with_the_spawner_thread_not_before() -> None:
    spawner = SpawnThread()
    spawner.start()
    child = await spawner.run(lambda: subprocess.Popen(["sleep", "60"], preexec_fn=_pdeathsig))
    try:
        # Other threads come and go (trio retires its idle workers): the child stays.
        for _ in range(3):
            await trio.to_thread.run_sync(lambda: None)
        assert child.poll() is None
        os.kill(child.pid, 0)
        spawner.stop()  # the thread that forked it ends: the kernel sends SIGKILL
        with trio.fail_after(30):
            while child.poll() is None:
                await trio.sleep(0.02)
        assert child.returncode == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
