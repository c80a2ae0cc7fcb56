"""FunctionPool healing with real worker processes: idempotent retry, the idle
heartbeat, reaping and held starts under pressure.

Faults are real: instances are SIGKILLed and SIGSTOPped; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import trio
from support import GATE_WAIT, eventually, running_stack, write_package

from huselet.dispatch.instance import InstanceState
from huselet.errors import InstanceLost, Unavailable

# Records each call in a file, so a test can tell how often a handler really ran.
# A call with a "gate" is held until the test creates that file (never, for a
# call whose instance the test kills): not for a time a loaded machine outlasts.
COUNTING = (
    GATE_WAIT
    + """
import os, time
def handler(event, context):
    with open(os.environ["CALLS"], "a") as f:
        f.write(context.request_id + "\\n")
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("gate"):
        wait_at_gate(event["gate"])
    return {"pid": os.getpid()}
"""
)


def fn(root: Path, name: str, **extra: object) -> dict:
    write_package(root, name, COUNTING)
    env = {"CALLS": str(root / f"{name}.calls")}
    return {"name": name, "package": f"pkgs/{name}", "handler": "main:handler", "env": env, **extra}


# The handler writes its calls to a host file: its workers must not be confined
# (the pool's behaviour is under test here, not the sandbox).
unconfined_stack = partial(running_stack, runtimes={"process": {"isolation": False}})


def held(gate: Path) -> bytes:
    """An event held at ``gate`` (a host path: these workers are unconfined)."""
    return json.dumps({"gate": str(gate)}).encode()


def calls(root: Path, name: str) -> list[str]:
    path = root / f"{name}.calls"
    return path.read_text().split() if path.exists() else []


async def kill_the_instance_running(  # type: ignore[no-untyped-def]
    pool, signum: int, *, exclude: int = 0, when: Callable[[], bool] = lambda: True
) -> int:
    """Wait until an instance (not ``exclude``) is busy and ``when()`` holds
    (e.g. its handler recorded the call), send it ``signum``; return its pid."""
    while True:
        for record in pool.instances.values():
            pid = record.handle.pid if record.handle is not None else None
            if record.inflight and pid and pid != exclude and when():
                os.kill(pid, signum)
                return int(pid)
        await trio.sleep(0.005)


async def test_idempotent_request_is_retried_once_on_a_fresh_instance(short_tmp: Path) -> None:
    async with unconfined_stack(short_tmp, [fn(short_tmp, "idem", idempotent=True)]) as node:
        pool = node.pool("idem")
        gate = short_tmp / "gate"

        async def kill_then_open() -> None:  # the retry passes the gate
            ran = lambda: len(calls(short_tmp, "idem")) == 1  # noqa: E731
            await kill_the_instance_running(pool, signal.SIGKILL, when=ran)
            gate.touch()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_then_open)
                result = await node.dispatcher.invoke("idem", held(gate), "json", request_id="r-1")
        # The caller got a result from the second instance; the handler ran twice.
        assert json.loads(result.body)["pid"] > 0
        assert calls(short_tmp, "idem") == ["r-1", "r-1"]
        assert pool.counters["retried"] == 1 and pool.counters["instance_lost"] == 0


async def test_idempotent_request_is_retried_only_once(short_tmp: Path) -> None:
    async with unconfined_stack(short_tmp, [fn(short_tmp, "idem", idempotent=True)]) as node:
        pool = node.pool("idem")
        with trio.fail_after(30):

            async def kill_twice() -> None:
                def ran(n: int) -> Callable[[], bool]:
                    return lambda: len(calls(short_tmp, "idem")) == n

                first = await kill_the_instance_running(pool, signal.SIGKILL, when=ran(1))
                await kill_the_instance_running(pool, signal.SIGKILL, exclude=first, when=ran(2))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_twice)
                with pytest.raises(InstanceLost, match="killed by SIGKILL"):
                    event = held(short_tmp / "never-opened")
                    await node.dispatcher.invoke("idem", event, "json", request_id="r-2")
        assert calls(short_tmp, "idem") == ["r-2", "r-2"]
        assert pool.counters["retried"] == 1 and pool.counters["instance_lost"] == 1


async def test_a_function_not_declared_idempotent_is_never_retried(short_tmp: Path) -> None:
    async with unconfined_stack(short_tmp, [fn(short_tmp, "plain")]) as node:
        pool = node.pool("plain")
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                ran = lambda: len(calls(short_tmp, "plain")) == 1  # noqa: E731
                nursery.start_soon(
                    partial(kill_the_instance_running, pool, signal.SIGKILL, when=ran)
                )
                with pytest.raises(InstanceLost, match="killed by SIGKILL while serving"):
                    event = held(short_tmp / "never-opened")
                    await node.dispatcher.invoke("plain", event, "json", request_id="r-3")
        assert calls(short_tmp, "plain") == ["r-3"]
        assert pool.counters["retried"] == 0


async def test_a_stopped_idle_instance_misses_its_heartbeat_and_is_replaced(
    short_tmp: Path,
) -> None:
    # A timeout a loaded machine's idle worker always meets; the detection time
    # itself is measured in bench/, not bounded here.
    # Pinged on the slow idle period too (its stop would also arrive as SIGCHLD:
    # tests/dispatch/test_heartbeat.py checks that path alone).
    health = {
        "heartbeat_interval_ms": 200,
        "heartbeat_timeout_ms": 2000,
        "idle_heartbeat_interval_ms": 200,
    }
    functions = [fn(short_tmp, "hb", min_instances=1)]
    async with unconfined_stack(short_tmp, functions, extra={"health": health}) as node:
        pool = node.pool("hb")
        with trio.fail_after(60):
            first = json.loads((await node.dispatcher.invoke("hb", b"{}", "json")).body)["pid"]
            # An idle instance that answers pings is left alone: three answers heard.
            (record,) = pool.instances.values()
            heard = [record.last_heard]
            while len(heard) < 4:
                if record.last_heard != heard[-1]:
                    heard.append(record.last_heard)
                await trio.sleep(0.01)
            assert pool.counters["heartbeat_missed"] == 0
            assert [r.handle.pid for r in pool.instances.values()] == [first]
            os.kill(first, signal.SIGSTOP)
            while pool.counters["heartbeat_missed"] == 0:
                await trio.sleep(0.01)
            # min_instances brings a fresh one; the stopped one is gone (SIGKILL works on it).
            second = json.loads((await node.dispatcher.invoke("hb", b"{}", "json")).body)["pid"]
        assert second != first
        assert record.stop_reason == "missed heartbeat"
        with pytest.raises(ProcessLookupError):
            os.kill(first, 0)


async def test_reap_idle_keeps_min_instances_and_spares_busy_ones(short_tmp: Path) -> None:
    functions = [fn(short_tmp, "r", min_instances=1, max_instances=4)]
    async with unconfined_stack(short_tmp, functions) as node:
        pool = node.pool("r")
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(node.dispatcher.invoke, "r", b'{"sleep": 0.3}', "json")
            assert len(pool.instances) >= 2
            # An instance the burst did not need may still be starting on a busy
            # machine; a starting one is not idle, so the reaper would spare it.
            await eventually(
                lambda: all(r.state is not InstanceState.STARTING for r in pool.instances.values())
            )
            gate = short_tmp / "gate"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(node.dispatcher.invoke, "r", held(gate), "json")
                await eventually(lambda: any(r.inflight for r in pool.instances.values()))
                before = len(pool.instances)
                reaped = node.dispatcher.reap_idle("test")
                assert reaped == before - 1  # every idle one; the busy one counts for min
                gate.touch()
            while len(pool.instances) > 1:
                await trio.sleep(0.01)
        assert pool.counters["instances_reaped"] == reaped
        assert pool.breaker.state.value == "closed"  # reaping is not a failure


async def test_held_starts_serve_warm_instances_and_refuse_cold_functions(
    short_tmp: Path,
) -> None:
    functions = [fn(short_tmp, "warm"), fn(short_tmp, "cold")]
    async with unconfined_stack(short_tmp, functions) as node:
        with trio.fail_after(30):
            await node.dispatcher.invoke("warm", b"{}", "json")
            node.dispatcher.hold_starts("memory pressure: test")
            await node.dispatcher.invoke("warm", b"{}", "json")  # the warm one still serves
            with pytest.raises(Unavailable, match="starts none now \\(memory pressure: test\\)"):
                await node.dispatcher.invoke("cold", b"{}", "json")
            node.dispatcher.hold_starts(None)
            await node.dispatcher.invoke("cold", b"{}", "json")
        assert node.pool("cold").counters["rejected_starts_held"] == 1
        assert all(
            r.state is not InstanceState.STARTING for r in node.pool("warm").instances.values()
        )


async def test_a_busy_instance_stopped_by_sigstop_is_replaced_before_the_deadline(
    short_tmp: Path,
) -> None:
    health = {"heartbeat_interval_ms": 200}
    functions = [fn(short_tmp, "plain", timeout_ms=20_000), fn(short_tmp, "idem", idempotent=True)]
    async with unconfined_stack(short_tmp, functions, extra={"health": health}) as node:
        gate = short_tmp / "gate"

        async def stop_then_open() -> None:  # the retry passes the gate
            await kill_the_instance_running(node.pool("idem"), signal.SIGSTOP)
            gate.touch()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_the_instance_running, node.pool("plain"), signal.SIGSTOP)
                # Held at a gate never opened: only the stop's detection ends it
                # (its deadline would raise DeadlineExceeded, not this).
                with pytest.raises(InstanceLost, match="frozen by SIGSTOP or a tracer"):
                    await node.dispatcher.invoke("plain", held(short_tmp / "never-opened"), "json")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop_then_open)
                result = await node.dispatcher.invoke("idem", held(gate), "json")
        assert json.loads(result.body)["pid"] > 0
        assert node.pool("plain").counters["deadline_exceeded"] == 0  # found stopped, first
        assert node.pool("plain").counters["stopped_busy"] == 1
        assert node.pool("idem").counters["retried"] == 1


async def test_an_instance_killed_with_its_request_unread_is_reported_by_its_exit(
    short_tmp: Path,
) -> None:
    # The request waits unread in the frozen worker's socket; the kill then makes
    # Linux reset the link. The caller must hear how it died, not "protocol error".
    async with unconfined_stack(short_tmp, [fn(short_tmp, "plain")]) as node:
        pool = node.pool("plain")
        with trio.fail_after(30):
            pid = json.loads((await node.dispatcher.invoke("plain", b"{}", "json")).body)["pid"]
            os.kill(pid, signal.SIGSTOP)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_the_instance_running, pool, signal.SIGKILL)
                # The stop itself may be reported first (SIGCHLD: the instance
                # took the request while stopped): either way, how it ended.
                ended = "was killed by SIGKILL while serving|frozen by SIGSTOP or a tracer"
                with pytest.raises(InstanceLost, match=ended):
                    await node.dispatcher.invoke("plain", b"{}", "json")
                nursery.cancel_scope.cancel()  # the killer may have found nothing to kill
        assert pool.counters["link_errors"] == 0


async def test_a_request_the_instance_never_fully_received_is_requeued(short_tmp: Path) -> None:
    # A frozen worker stops reading: a large request's frame stalls in the socket.
    # Once the frozen instance is replaced, that request never reached a handler,
    # so it is safe to run elsewhere — even for a function not declared idempotent.
    health = {"heartbeat_interval_ms": 200}
    functions = [fn(short_tmp, "plain")]
    async with unconfined_stack(short_tmp, functions, extra={"health": health}) as node:
        pool = node.pool("plain")
        with trio.fail_after(30):
            pid = json.loads((await node.dispatcher.invoke("plain", b"{}", "json")).body)["pid"]
            os.kill(pid, signal.SIGSTOP)
            big = json.dumps({"pad": "x" * (4 << 20)}).encode()
            result = await node.dispatcher.invoke("plain", big, "json", request_id="r-big")
        assert json.loads(result.body)["pid"] != pid
        assert pool.counters["requeued_undelivered"] == 1 and pool.counters["retried"] == 0
        assert calls(short_tmp, "plain")[-1] == "r-big"
