"""A held (throttled) HTTP connection whose client has gone admits nothing more from it.

The real HTTP ingress on real sockets, with the real admission (function
``echo`` over its rate: its first call is admitted, the next ones get 429s):
the client pipelines requests behind the throttled one and closes. What the
node still admitted is what the in-test invoker was called with.

- Left while the 429 was held: the hold ends at once (PeerWatch) and the
  connection is closed, with the hold minutes from its end.
- Left while an admitted request ran (the connection had a 429 just before):
  when that one is answered, the next queued request is not admitted.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio
from httpkit import GUARD_S, SETTINGS, FakeInvoker, RawClient, raw_request
from support import eventually

from huselet.config.auth import AuthSettings, RateLimit
from huselet.gateway import HttpIngress
from huselet.gateway.admission import Admission, FunctionPolicy

ONCE = RateLimit(rate_per_s=0.001, burst=1)  # one call, then 429s for the test's life


@dataclass(frozen=True)
class Capped:
    tenant: str | None = None
    rate: RateLimit | None = ONCE
    max_concurrent: int | None = None


def policy(name: str) -> FunctionPolicy | None:
    return Capped() if name == "echo" else None


def ingress_with(throttle_delay_ms: int) -> tuple[HttpIngress, FakeInvoker]:
    invoker = FakeInvoker()
    admission = Admission(AuthSettings(throttle_delay_ms=throttle_delay_ms), functions=policy)
    return HttpIngress(SETTINGS, invoker, admission=admission), invoker


def post(function: str, body: bytes) -> bytes:
    return raw_request("POST", f"/v1/invoke/{function}", body=body)


def decided(ingress: HttpIngress) -> int:
    snapshot = ingress.admission.snapshot()
    return int(snapshot["admitted"]) + sum(snapshot["refusals"].get("function_rate", {}).values())


async def test_a_client_that_leaves_during_its_held_429_has_the_connection_closed_at_once() -> None:
    ingress, invoker = ingress_with(throttle_delay_ms=600_000)  # a hold of 10 minutes
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(ingress.run)
        client = await RawClient.connect(bound)
        await client.send(post("echo", b"1") + post("echo", b"2") + post("boom", b"3") * 3)
        with trio.fail_after(GUARD_S):
            assert (await client.response()).status == 200
            # The second is being held; the client gives up on it.
            await eventually(lambda: decided(ingress) == 2)
        await client.aclose()
        await eventually(lambda: ingress.open_connections == 0, timeout=GUARD_S)
        assert ingress.held_client_gone == 1
        assert decided(ingress) == 2 and [c.function for c in invoker.calls] == ["echo"]
        nursery.cancel_scope.cancel()


async def test_a_client_that_leaves_while_a_request_runs_gets_no_further_request_admitted() -> None:
    ingress, invoker = ingress_with(throttle_delay_ms=0)  # 429s answered at once
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(ingress.run)
        client = await RawClient.connect(bound)
        queued = post("boom", b"4") * 3  # admitted if read: no limit on boom
        await client.send(post("echo", b"1") + post("echo", b"2") + post("wait", b"3") + queued)
        with trio.fail_after(GUARD_S):
            assert (await client.response()).status == 200
            assert (await client.response()).status == 429
            await invoker.entered.wait()  # "wait" was admitted while the client was there
        await client.aclose()
        invoker.release.set()  # its reply finds nobody; what it queued must stay unread
        await eventually(lambda: ingress.open_connections == 0, timeout=GUARD_S)
        assert [c.function for c in invoker.calls] == ["echo", "wait"]
        assert ingress.held_client_gone == 1 and decided(ingress) == 3
        nursery.cancel_scope.cancel()
