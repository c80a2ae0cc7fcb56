"""Dispatcher + FunctionPool with real worker processes over the real link.

Each test writes a function package, runs the in-process node stack and checks
what a caller would get: results, typed errors, and that nothing is lost.
"""

from __future__ import annotations

import json
import os
import signal
from functools import partial
from pathlib import Path

import pytest
import trio
from support import GATE_WAIT, eventually, open_gate, running_stack, write_package

from huselet.dispatch.invocation import Invocation
from huselet.dispatch.pool import FunctionPool
from huselet.errors import (
    BadRequest,
    DeadlineExceeded,
    Draining,
    HandlerError,
    InstanceLost,
    InstanceStartFailed,
    QueueFull,
    UnknownFunction,
)
from huselet.observe.story import RequestStory

ECHO = (
    GATE_WAIT
    + """
import os, time
def handler(event, context):
    if isinstance(event, dict) and event.get("sleep"):
        time.sleep(event["sleep"])
    if isinstance(event, dict) and event.get("gate"):  # held until the test opens it
        wait_at_gate(event["gate"])
    if isinstance(event, dict) and event.get("raise"):
        raise ValueError(event["raise"])
    return {"event": event, "pid": os.getpid(), "rid": context.request_id,
            "remaining_ok": 0 < context.remaining_ms() <= 60000}
"""
)


def fn(root: Path, name: str = "echo", source: str = ECHO, **extra: object) -> dict:
    write_package(root, name, source)
    return {"name": name, "package": f"pkgs/{name}", "handler": "main:handler", **extra}


def body(result) -> dict:  # type: ignore[no-untyped-def]
    assert result.content_type == "application/json"
    return json.loads(result.body)


async def test_invoke_json_bytes_and_text(short_tmp: Path) -> None:
    text_fn = "def handler(e, c):\n    return 'hi ' + str(len(e))\n"
    rev_fn = "def handler(e, c):\n    return e[::-1]\n"
    functions = [fn(short_tmp), fn(short_tmp, "text", text_fn), fn(short_tmp, "rev", rev_fn)]
    async with running_stack(short_tmp, functions) as node:
        with trio.fail_after(30):
            out = body(await node.dispatcher.invoke("echo", b'{"a": 1}', "json", request_id="r-1"))
            assert out["event"] == {"a": 1} and out["rid"] == "r-1" and out["remaining_ok"]
            raw = await node.dispatcher.invoke("rev", b"\x00\xff", "bytes")
            assert (raw.body, raw.content_type) == (b"\xff\x00", "application/octet-stream")
            with pytest.raises(HandlerError, match="not JSON-serialisable") as info:
                await node.dispatcher.invoke(
                    "echo", b"\x00", "bytes"
                )  # returns bytes inside a dict
            assert info.value.error_type == "InvalidResult"
            res = await node.dispatcher.invoke("text", b"abc", "bytes")
            assert (res.body, res.content_type) == (b"hi 3", "text/plain; charset=utf-8")
        with pytest.raises(UnknownFunction):
            await node.dispatcher.invoke("nope", b"", "bytes")


async def test_handler_errors_and_bad_events_are_typed(short_tmp: Path) -> None:
    async with running_stack(short_tmp, [fn(short_tmp)]) as node:
        with trio.fail_after(30):
            with pytest.raises(HandlerError) as info:
                await node.dispatcher.invoke("echo", b'{"raise": "boom"}', "json")
            assert (info.value.error_type, info.value.message, info.value.status) == (
                "ValueError",
                "boom",
                502,
            )
            with pytest.raises(BadRequest, match="not valid JSON"):
                await node.dispatcher.invoke("echo", b"{nope", "json")
            # The instance survived both and still serves.
            assert body(await node.dispatcher.invoke("echo", b"1", "json"))["event"] == 1
        assert len(node.pool("echo").instances) == 1


async def test_import_failure_fails_waiting_requests_fast(short_tmp: Path) -> None:
    broken = "import does_not_exist\ndef handler(e, c):\n    return 1\n"
    async with running_stack(short_tmp, [fn(short_tmp, "broken", broken)]) as node:
        with trio.fail_after(60), pytest.raises(InstanceStartFailed) as info:
            await node.dispatcher.invoke("broken", b"{}", "json")
        assert (
            "ModuleNotFoundError" in info.value.message and "does_not_exist" in info.value.message
        )
        assert "/pkgs/" not in info.value.message  # no host paths to callers
        assert node.pool("broken").counters["start_failures"] == 1


async def test_deadline_kills_the_stuck_instance_and_next_request_works(short_tmp: Path) -> None:
    async with running_stack(short_tmp, [fn(short_tmp, timeout_ms=20_000)]) as node:
        with trio.fail_after(30):
            first = body(await node.dispatcher.invoke("echo", b"{}", "json"))
            pool = node.pool("echo")
            (stuck,) = pool.instances.values()  # idle and warm: it takes the next request
            with pytest.raises(DeadlineExceeded, match="no reply within 300 ms"):
                await node.dispatcher.invoke("echo", b'{"sleep": 30}', "json", timeout_ms=300)
            # The stuck instance is killed *for its deadline*, at once: not reused,
            # not left for the heartbeat (or the idle reaper) to kill later.
            assert pool.counters["deadline_kills"] == 1
            assert stuck.stop_reason == "request deadline passed"
            assert stuck.handle is not None and stuck.handle.pid == first["pid"]
            await stuck.handle.wait()
            second = body(await node.dispatcher.invoke("echo", b"{}", "json"))
        assert second["pid"] != first["pid"]
        assert pool.counters["heartbeat_missed"] == 0


async def test_a_cancelled_caller_abandons_its_request_before_the_deadline(
    short_tmp: Path,
) -> None:
    async with running_stack(short_tmp, [fn(short_tmp, timeout_ms=20_000)]) as node:
        with trio.fail_after(30):
            await node.dispatcher.invoke("echo", b"{}", "json")  # warm
            pool = node.pool("echo")
            (stuck,) = pool.instances.values()
            with trio.CancelScope() as caller:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(node.dispatcher.invoke, "echo", b'{"sleep": 30}', "json")
                    while not stuck.inflight:  # the request reached the instance
                        await trio.sleep(0.01)
                    caller.cancel()  # the caller goes away, long before the deadline
            # Abandoned at once: the instance working on it is stopped, and the
            # deadline timer holds nothing for it (no late second completion).
            assert stuck.stop_reason == "request deadline passed"
            assert pool.counters["deadline_exceeded"] == 1
            assert len(node.dispatcher.deadlines) == 0
            assert stuck.handle is not None
            await stuck.handle.wait()
            assert body(await node.dispatcher.invoke("echo", b"{}", "json"))["event"] == {}


async def test_sigkill_mid_request_is_a_clear_502_and_the_next_works(short_tmp: Path) -> None:
    async with running_stack(short_tmp, [fn(short_tmp)]) as node:
        with trio.fail_after(30):
            pid = body(await node.dispatcher.invoke("echo", b"{}", "json"))["pid"]

            pool = node.pool("echo")

            def delivered() -> bool:  # the request is wholly on the instance's side
                return any(r.inflight and r.sending is None for r in pool.instances.values())

            async def kill_once_delivered() -> None:
                while not delivered():
                    await trio.sleep(0.005)
                os.kill(pid, signal.SIGKILL)

            event = json.dumps({"sleep": 60}).encode()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_once_delivered)
                with pytest.raises(InstanceLost, match="was killed by SIGKILL while serving"):
                    await node.dispatcher.invoke("echo", event, "json")
            assert body(await node.dispatcher.invoke("echo", b"{}", "json"))["pid"] != pid
        assert node.pool("echo").counters["instance_lost"] == 1


async def test_burst_beyond_max_instances_is_all_answered(short_tmp: Path) -> None:
    async with running_stack(short_tmp, [fn(short_tmp, max_instances=3)]) as node:
        results: list[dict] = []

        async def one(i: int) -> None:
            results.append(
                body(
                    await node.dispatcher.invoke(
                        "echo", json.dumps({"i": i, "sleep": 0.02}).encode(), "json"
                    )
                )
            )

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(40):
                    nursery.start_soon(one, i)
        assert sorted(r["event"]["i"] for r in results) == list(range(40))
        # The burst made the pool grow to its bound and no further. (Which
        # instances served is up to the machine: the first one ready may serve all.)
        assert node.pool("echo").counters["instances_started"] == 3
        assert len({r["pid"] for r in results}) <= 3
        assert node.pool("echo").counters["instances_started"] <= 3


async def test_queue_bound_refuses_with_429(short_tmp: Path) -> None:
    async with running_stack(short_tmp, [fn(short_tmp, max_instances=1, max_queue=2)]) as node:
        outcomes: list[str] = []

        async def one() -> None:
            try:
                await node.dispatcher.invoke("echo", b'{"sleep": 0.5}', "json")
                outcomes.append("ok")
            except QueueFull:
                outcomes.append("429")

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                # All six arrive before any instance exists (no checkpoint between
                # them), however slow the machine: the bound alone decides.
                for _ in range(6):
                    nursery.start_soon(one)
        # 1 starting/serving + 2 queued fit; the rest are refused at once.
        assert outcomes.count("429") >= 3 and outcomes.count("ok") >= 1
        assert len(outcomes) == 6


async def test_idle_instances_are_reaped(short_tmp: Path) -> None:
    async with running_stack(short_tmp, [fn(short_tmp, idle_timeout_ms=200)]) as node:
        with trio.fail_after(30):
            pid = body(await node.dispatcher.invoke("echo", b"{}", "json"))["pid"]
            while node.pool("echo").instances:
                await trio.sleep(0.02)
            while Path(f"/proc/{pid}").exists():
                await trio.sleep(0.02)
            assert node.pool("echo").live_count() == 0  # its teardown unlisted it
            # And a new request starts a fresh one.
            assert body(await node.dispatcher.invoke("echo", b"{}", "json"))["pid"] != pid
            assert node.pool("echo").live_count() == 1


async def test_min_instances_are_started_ahead(short_tmp: Path) -> None:
    async with running_stack(
        short_tmp, [fn(short_tmp, min_instances=2, max_instances=3, idle_timeout_ms=100)]
    ) as node:
        pool = node.pool("echo")
        with trio.fail_after(30):
            while sum(1 for r in pool.instances.values() if r.state.value == "idle") < 2:
                await trio.sleep(0.02)
            # A burst makes a third; once idle past the timeout it is reaped —
            # proof the reaper ran — and the two of min_instances are kept.
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(node.dispatcher.invoke, "echo", b'{"sleep": 0.3}', "json")
            assert pool.counters["instances_started"] == 3
            while len(pool.instances) > 2:
                await trio.sleep(0.02)
        assert len(pool.instances) == 2 and pool.live_count() == 2
        assert pool.counters["instances_started"] == 3  # none reaped below the minimum


async def test_a_batch_that_an_idle_instance_cannot_take_makes_the_pool_grow(
    short_tmp: Path,
) -> None:
    # The framed ingress submits one read's calls in a batch. While they are put,
    # the idle instance's credit counts as spare capacity; at the batch's end it
    # takes one (the pool can still grow: none waits behind another), and the
    # pool must start instances for the rest then, not when that one is done.
    # Each call is held at a gate in its instance's private /tmp until all three
    # are in, however long the new instances take to start on a busy machine.
    gate = f"/tmp/gate-{short_tmp.name}"
    async with running_stack(
        short_tmp, [fn(short_tmp, min_instances=1, max_instances=3, idle_timeout_ms=60_000)]
    ) as node:
        pool = node.pool("echo")
        with trio.fail_after(60):
            for _ in range(3):  # a fast handler: the worker asks for a window of credit
                await node.dispatcher.invoke("echo", b"{}", "json")
            await eventually(lambda: pool.spare_credits >= 3)
            assert pool.counters["instances_started"] == 1
            event = json.dumps({"gate": gate}).encode()
            with node.dispatcher.batch():
                invs = [node.dispatcher.begin("echo", event, "json") for _ in range(3)]
            assert pool.counters["instances_started"] == 3
            # None queued behind the held one: one call in flight on each instance.
            await eventually(
                lambda: sorted(len(r.inflight) for r in pool.instances.values()) == [1, 1, 1]
            )
            assert open_gate(pool.instance_pids(), gate) == 3
            pids = set()
            for inv in invs:
                await inv.wait()
                node.dispatcher.settle(inv)
                pids.add(body(inv.result())["pid"])
        assert len(pids) == 3  # each on its own instance


class ColdStarts(RequestStory):
    """The request story, noting which requests it was told started an instance."""

    def __init__(self) -> None:
        super().__init__(metrics=None, ring=None, access_rate=0)
        self.cold: list[str] = []

    def cold_start(self, pool: FunctionPool, inv: Invocation) -> None:
        self.cold.append(inv.request_id)


async def test_the_story_hears_of_each_request_that_started_an_instance(short_tmp: Path) -> None:
    gate = f"/tmp/gate-{short_tmp.name}"
    async with running_stack(short_tmp, [fn(short_tmp, max_instances=2)]) as node:
        story = node.dispatcher.story = ColdStarts()
        pool = node.pool("echo")
        with trio.fail_after(60):
            await node.dispatcher.invoke("echo", b"{}", "json", request_id="first")
            await node.dispatcher.invoke("echo", b"{}", "json", request_id="warm")
            assert story.cold == ["first"]
            # Two at once on one warm instance: the second makes the pool grow. The
            # first is held at a gate until then: it cannot finish first on a busy
            # machine and leave the warm instance idle for the second.
            held = json.dumps({"gate": gate}).encode()
            async with trio.open_nursery() as nursery:
                invoke = node.dispatcher.invoke
                nursery.start_soon(partial(invoke, "echo", held, "json", request_id="busy"))
                await eventually(lambda: any(r.inflight for r in pool.instances.values()))
                nursery.start_soon(partial(invoke, "echo", b"{}", "json", request_id="grows"))
                await eventually(lambda: pool.counters["instances_started"] == 2)
                assert open_gate(pool.instance_pids(), gate)
        assert story.cold == ["first", "grows"]
        assert node.pool("echo").counters["instances_started"] == 2


async def test_drain_finishes_inflight_and_refuses_new(short_tmp: Path) -> None:
    async with running_stack(short_tmp, [fn(short_tmp)]) as node:
        done: list[dict] = []

        async def slow() -> None:
            done.append(body(await node.dispatcher.invoke("echo", b'{"sleep": 0.5}', "json")))

        with trio.fail_after(30):
            await node.dispatcher.invoke("echo", b"{}", "json")
            pool = node.pool("echo")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow)
                while not any(r.inflight for r in pool.instances.values()):
                    await trio.sleep(0.005)
                nursery.start_soon(node.dispatcher.drain, 30.0)
                while not node.dispatcher.draining:
                    await trio.sleep(0.005)
                with pytest.raises(Draining):
                    await node.dispatcher.invoke("echo", b"{}", "json")
        assert len(done) == 1
        assert not node.pool("echo").instances


async def test_hostile_link_peers_are_refused_and_daemon_keeps_serving(short_tmp: Path) -> None:
    import socket as pysocket

    from protocol.frames import FrameDecoder, encode_frame
    from protocol.link import Hello

    async with running_stack(short_tmp, [fn(short_tmp)]) as node:
        path = str(node.links.socket_path("echo"))

        async def exchange(data: bytes) -> dict | None:
            sock = trio.socket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
            await sock.connect(path)
            await sock.send(data)
            dec = FrameDecoder()
            with trio.fail_after(10):
                while chunk := await sock.recv(65536):
                    dec.receive_data(chunk)
            sock.close()
            return dec.next_frame()

        # An unknown instance or wrong token is told nothing: a close, no frame.
        refused = await exchange(encode_frame(Hello(1, "echo-00000000", "wrong", 1).encode()))
        assert refused is None
        garbage = await exchange(b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1")
        assert garbage is not None and garbage["code"] == "malformed"
        huge = await exchange(b"\xff\xff\xff\xff")
        assert huge is not None and huge["code"] == "malformed"
        assert node.links.refused == 3
        with trio.fail_after(30):
            assert body(await node.dispatcher.invoke("echo", b"{}", "json"))["event"] == {}


async def test_crash_loop_opens_the_breaker_and_a_fix_closes_it(short_tmp: Path) -> None:
    from huselet.errors import Unavailable

    broken = "raise ImportError('bad build')\n"
    async with running_stack(short_tmp, [fn(short_tmp, "loop", broken)]) as node:
        pool = node.pool("loop")
        with trio.fail_after(60):
            for _ in range(5):  # the default threshold: 5 failures within 30 s
                with pytest.raises(InstanceStartFailed, match="bad build"):
                    await node.dispatcher.invoke("loop", b"{}", "json")
            with pytest.raises(Unavailable, match="circuit breaker is open") as info:
                await node.dispatcher.invoke("loop", b"{}", "json")
            assert info.value.retry_after_s == 1 and pool.counters["breaker_opened"] == 1
            assert pool.status()["breaker"]["state"] == "open"
            started = pool.counters["instances_started"]
            # Fixed on disk; after the open period one trial goes through and closes it.
            write_package(short_tmp, "loop", "def handler(e, c):\n    return 'fixed'\n")
            while True:  # refused (fast) until its open period has passed
                try:
                    res = await node.dispatcher.invoke("loop", b"{}", "json")
                    break
                except Unavailable:
                    await trio.sleep(0.05)
            assert res.body == b"fixed" and pool.status()["breaker"]["state"] == "closed"
            assert pool.counters["instances_started"] == started + 1


async def test_single_mode_uses_a_fresh_instance_per_request(short_tmp: Path) -> None:
    async with running_stack(short_tmp, [fn(short_tmp, instance_mode="single")]) as node:
        with trio.fail_after(60):
            pids = [
                body(await node.dispatcher.invoke("echo", b"{}", "json"))["pid"] for _ in range(3)
            ]
            assert len(set(pids)) == 3
            pool = node.pool("echo")
            while pool.instances:  # each is torn down after its one request
                await trio.sleep(0.02)
        assert pool.counters["instances_started"] == 3 and pool.counters["ok"] == 3
        assert pool.counters.get("instances_lost", 0) == 0
