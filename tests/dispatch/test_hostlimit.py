"""A start refused at a host limit is a typed 503, never an open breaker.

The limit is real and the test's own: the fork runtime's ``nproc = 16``
(RLIMIT_NPROC of the function's uid, what makes the zygote's clone fail with
EAGAIN), used up by threads the function's init code starts in its zygote.
Nothing of the host's own limits is touched.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from support import GATE_WAIT, running_stack, write_package

from huselet.errors import HostLimitReached
from huselet.gateway.responses import error_reply
from huselet.testing.conformance import invoke_json
from huselet.testing.probes import require_sandbox_host, sandbox_settings

pytestmark = pytest.mark.usefixtures("sandbox_host")

NPROC = 16  # the smallest the fork runtime accepts

# Init code (run once, in the zygote, as the function's uid): park threads so
# the uid holds ``1 + THREADS`` of its NPROC tasks before any instance. They
# end after ``hold_s``, or at once when the test opens ``gate`` (one of them
# watches it; the rest wait for that one).
HOGGING = """
import threading, time
THREADS = {threads}
released = threading.Event()
def park(gate):
    if gate:
        wait_at_gate(gate, {hold_s})
        released.set()
    released.wait({hold_s})
for i in range(THREADS):
    threading.Thread(target=park, args=({gate!r} if i == 0 else None,), daemon=True).start()
def handler(event, ctx):
    time.sleep(event.get("sleep", 0))
    return {{"ok": True}}
"""


@pytest.fixture
def sandbox_host() -> None:
    require_sandbox_host()


def fn(
    root: Path, threads: int, hold_s: float = 3600, gate: Path | None = None, **extra: object
) -> dict[str, object]:
    source = HOGGING.format(threads=threads, hold_s=hold_s, gate=gate and str(gate))
    pkg = write_package(root, "full", GATE_WAIT + source)
    spec = {"name": "full", "package": str(pkg), "handler": "main:handler", "runtime": "fork"}
    return spec | extra


async def test_no_room_for_any_instance_is_a_typed_503_and_the_breaker_stays_closed(
    short_tmp: Path,
) -> None:
    functions = [fn(short_tmp, NPROC - 1)]  # the zygote alone holds every task the uid may
    runtimes = {"fork": sandbox_settings(short_tmp, nproc=NPROC)}
    async with running_stack(short_tmp, functions, runtimes) as stack:
        pool = stack.pool("full")
        with trio.fail_after(60):
            # More attempts than the breaker's failure threshold (5).
            for _ in range(8):
                with pytest.raises(HostLimitReached) as caught:
                    await invoke_json(stack, "full", {})
                # Held or not: the same answer, never the breaker's.
                while pool.host_limit.holding(trio.current_time()):
                    with pytest.raises(HostLimitReached):
                        await invoke_json(stack, "full", {})
                    await trio.sleep(0.1)
        assert "process limit" in caught.value.message
        assert "Errno 11" in caught.value.message  # EAGAIN from the zygote's clone
        assert pool.breaker.state.value == "closed"
        assert pool.counters["breaker_opened"] == 0
        assert pool.counters["start_refused_host_limit"] >= 8
        assert pool.counters["start_failures"] == 0
        # What a caller of the HTTP gateway reads.
        reply = error_reply(caught.value)
        assert reply.status == 503
        assert json.loads(reply.body)["error"]["code"] == "host_limit"
        assert (b"Retry-After", b"1") in reply.headers


async def test_requests_wait_for_the_instances_that_fit(short_tmp: Path) -> None:
    # Room for one or two instances (one or two tasks each), not for four.
    functions = [fn(short_tmp, NPROC - 3, max_instances=8)]
    runtimes = {"fork": sandbox_settings(short_tmp, nproc=NPROC)}
    async with running_stack(short_tmp, functions, runtimes) as stack:
        pool = stack.pool("full")
        results: list[object] = []

        async def one() -> None:
            results.append(await invoke_json(stack, "full", {"sleep": 0.3}))

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for _ in range(6):
                    nursery.start_soon(one)
        assert results == [{"ok": True}] * 6  # all served by the instances that started
        assert pool.counters["start_refused_host_limit"] >= 1
        assert pool.counters["start_failures"] == 0
        assert pool.breaker.state.value == "closed"


async def test_starts_resume_by_themselves_once_the_host_has_room(short_tmp: Path) -> None:
    # The zygote's threads hold every task of the uid until a start was refused,
    # then end: min_instances is reached without a request prompting a start.
    # (Until the test opens a gate, not for a time a slow zygote start outlasts.
    # The gate is in a host directory the sandbox keeps in view.)
    gates = short_tmp / "gates"
    gates.mkdir()
    gate = gates / "open"
    functions = [fn(short_tmp, NPROC - 1, hold_s=600, gate=gate, min_instances=2)]
    runtimes = {"fork": sandbox_settings(short_tmp, nproc=NPROC, ro_paths=[str(gates)])}
    async with running_stack(short_tmp, functions, runtimes) as stack:
        pool = stack.pool("full")
        with trio.fail_after(120):
            while pool.counters["start_refused_host_limit"] == 0:
                await trio.sleep(0.05)
            gate.touch()
            while sum(r.state.value == "idle" for r in pool.instances.values()) < 2:
                await trio.sleep(0.05)
        assert pool.counters["start_failures"] == 0
        assert pool.breaker.state.value == "closed"
