"""FdWatcher: one task watching every fork instance's exit (pidfd) and output pipe.

Real pipes, real child processes, the real fork runtime: an exit is reported
(with its status) and output is logged without a task per instance, and the
runtime's task count does not grow with the number of instances.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
from support import eventually, running_stack, write_package

from huselet.dispatch.instance import InstanceState
from huselet.runtime.base import ExitStatus
from huselet.runtime.children import ChildHandle
from huselet.runtime.fdwatch import FdWatcher, WatchedOutput
from huselet.runtime.fork import ForkRuntime
from huselet.runtime.output import OutputLimiter, OutputLines
from huselet.testing.probes import require_sandbox_host, sandbox_settings


class Lines:
    """A logger that keeps what it is given."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str, **fields: Any) -> None:
        self.lines.append(fields.get("line", message))

    def warning(self, message: str, **fields: Any) -> None:
        self.lines.append(message)


async def test_a_pipe_is_read_line_by_line_and_closed_at_eof() -> None:
    watcher = FdWatcher()
    logger = Lines()
    r, w = os.pipe()
    output = WatchedOutput(r, OutputLines("output", {}, logger, OutputLimiter()), watcher)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watcher.run)
        os.write(w, b"one\ntw")
        await eventually(lambda: logger.lines == ["one"])
        os.write(w, b"o\nthree")
        os.close(w)
        with trio.fail_after(30):
            await output.done.wait()
        assert logger.lines == ["one", "two", "three"]  # the unterminated rest at EOF
        assert len(watcher) == 0  # nothing left watched
        nursery.cancel_scope.cancel()
    watcher.close()


async def test_an_exit_is_reaped_by_the_watcher_and_told_to_callbacks() -> None:
    watcher = FdWatcher()
    child = subprocess.Popen(["sh", "-c", "read x; exit 7"], stdin=subprocess.PIPE)
    handle = ChildHandle("c", child.pid)
    told: list[ExitStatus] = []
    assert handle.on_exit(told.append)
    handle.watch_with(watcher)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watcher.run)
        assert child.stdin is not None
        child.stdin.close()  # read gets EOF: it exits with 7
        with trio.fail_after(30):
            status = await handle.wait()
        assert status.code == 7 and told == [status]
        assert len(watcher) == 0
        # Registered after the exit: called at once.
        late: list[ExitStatus] = []
        handle.on_exit(late.append)
        assert late == [status]
        nursery.cancel_scope.cancel()
    watcher.close()


ECHO = "def handler(event, ctx):\n    print('served', ctx.instance_id)\n    return {}\n"


@pytest.mark.parametrize("count", [1, 6])
async def test_fork_instances_cost_the_runtime_no_task_each(short_tmp: Path, count: int) -> None:
    require_sandbox_host()
    pkg = write_package(short_tmp, "f", ECHO)
    spec = {"name": "f", "package": str(pkg), "handler": "main:handler", "runtime": "fork"}
    spec |= {"min_instances": count, "max_instances": count}
    async with running_stack(short_tmp, [spec], {"fork": sandbox_settings(short_tmp)}) as stack:
        runtime: ForkRuntime = stack.runtimes["fork"]  # type: ignore[assignment]
        pool = stack.pool("f")

        def idle() -> bool:
            states = [r.state for r in pool.instances.values()]
            return states.count(InstanceState.IDLE) == count

        await eventually(idle, timeout=120)
        assert runtime._nursery is not None
        # The zygote slot, cgroup reserve, maintenance and the watcher; no task per instance
        # (the reserve task may have finished).
        tasks = {t.name.rsplit(".", 1)[-1] for t in runtime._nursery.child_tasks}
        assert len(runtime._nursery.child_tasks) <= 4, tasks
        assert len(runtime._fds) == 2 * count  # each instance's pidfd and output pipe
        # An instance killed from outside: the watcher reaps it, the pool hears at once.
        record = next(iter(pool.instances.values()))
        assert record.handle is not None and record.handle.pid is not None
        os.kill(record.handle.pid, 9)
        await eventually(lambda: record.id not in pool.instances, timeout=60)
        assert record.exit_status is not None and record.exit_status.signal == 9


def test_a_watcher_holds_no_descriptor_until_it_watches_one() -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    watcher = FdWatcher()  # every ForkRuntime makes one, even one that never runs
    assert open_fds() == before
    r, w = os.pipe()
    try:
        watcher.watch(r, lambda: None)
        assert open_fds() == before + 3  # the pipe and the epoll
        watcher.unwatch(r)
    finally:
        watcher.close()
        os.close(r)
        os.close(w)
    assert open_fds() == before
