"""The descriptor loop: its decisions driven by scripted numbers against fakes
(pressurekit.py), the real ingress answering 503 while it refuses, and its
measurement against the real process (what it counts is what /proc lists)."""

from __future__ import annotations

import os
from pathlib import Path

import h11
import trio
from pressurekit import FakeDispatcher, FakeIngress, Script

from huselet.config import GatewaySettings, TcpAddress
from huselet.dispatch.invocation import InvokeResult
from huselet.gateway import HttpIngress
from huselet.health.fdpressure import FdPressure, FdSample, measure_fds, open_fd_count
from huselet.health.supervisor import HealthState, LoopReport

GUARD_S = 10  # hang guard, not a timing assertion


def test_measure_fds_counts_open_descriptors(tmp_path: Path) -> None:
    before = measure_fds()
    files = [open(tmp_path / f"f{i}", "w") for i in range(20)]  # noqa: SIM115
    try:
        during = measure_fds()
    finally:
        for f in files:
            f.close()
    assert during.open - before.open == 20
    assert during.limit > 0 and 0 < during.percent < 100


def test_open_fd_count_agrees_with_listing_the_directory() -> None:
    # Whichever way the kernel lets us count (the size of /proc/self/fd on
    # Linux 6.2+, a listing before), the figure is the listing's.
    assert open_fd_count() == len(os.listdir("/proc/self/fd")) - 1


async def test_fd_pressure_refuses_connections_then_accepts_again() -> None:
    dispatcher, ingress = FakeDispatcher(idle=2), FakeIngress()
    script = Script([FdSample(n, 1000) for n in (500, 860, 800, 700, 690)])
    loop = FdPressure(
        ingress,
        dispatcher,
        interval_s=1,
        enter_percent=85,
        leave_percent=70,
        measure=lambda: script.next(),
    )
    report = LoopReport("descriptors")
    await loop.check(report)
    assert ingress.refusals == [] and report.detail.startswith("500 of 1000 descriptors open")
    await loop.check(report)
    assert ingress.refusals == [
        "the node is short of file descriptors: 860 of 1000 descriptors open (86.0%)"
    ]
    assert report.counters["instances_reaped"] == 2 and report.state is HealthState.DEGRADED
    await loop.check(report)
    await loop.check(report)  # 70 % exactly: not past leave
    assert len(ingress.refusals) == 1 and report.state is HealthState.DEGRADED
    await loop.check(report)
    assert ingress.refusals[-1] is None and report.state is HealthState.OK
    assert report.counters["entered"] == 1 and report.counters["left"] == 1


async def test_ingress_answers_503_at_once_while_refusing(short_tmp: Path) -> None:
    class Invoker:
        draining = False

        async def invoke(
            self, function: str, event: bytes, kind: str, **kw: object
        ) -> InvokeResult:
            return InvokeResult(b"ok", "text/plain")

    ingress = HttpIngress(
        GatewaySettings(http=TcpAddress("127.0.0.1", 0), max_body_bytes=1024), Invoker()
    )

    async def get_healthz(port: int) -> tuple[int, bytes]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            conn = h11.Connection(h11.CLIENT)
            conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
            status, body = 0, b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return status, body

    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(ingress.run)
            assert (await get_healthz(address.port))[0] == 200
            ingress.refuse_connections("the node is short of file descriptors (900 of 1000)")
            status, body = await get_healthz(address.port)
            assert status == 503
            assert b"short of file descriptors (900 of 1000)" in body
            ingress.refuse_connections(None)
            assert (await get_healthz(address.port))[0] == 200
            nursery.cancel_scope.cancel()
