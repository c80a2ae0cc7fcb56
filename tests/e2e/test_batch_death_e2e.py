"""An instance that dies with a batch of requests on its link, end to end.

A worker whose handler is fast keeps several requests of credit, and when
the pool cannot grow the daemon writes several REQUEST frames to it at once.
The worker runs them in order and writes each RESULT before it starts the
next, so when it dies only the oldest request it had not answered can have
started: that one gets the treatment any request in flight on a dying
instance gets (lost for a plain function, retried once for an idempotent
one), and the ones queued behind it never ran, so they are served by the
replacement. The handler appends every execution to a log file: nothing is
lost, and nothing runs twice that must not.

How a batch is made, with one instance (``max_instances = 1``): a fast
requests give the worker its full window (four credits), a held request
("x") keeps it busy while four more queue in the daemon, then the gate
opens: x's result comes in with three credits left, and the daemon writes
the next three (die, b, c) in one send. "die" exits the process; d was never
sent to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_harness import Daemon, wait_until, write_config
from support import WAIT_S, write_package

from huselet.admin.client import AdminClient

pytestmark = pytest.mark.e2e

HANDLER = """
import os, time
def handler(event, context):
    with open(event["log"], "a") as log:
        log.write(event["id"] + "\\n")
    if event.get("gate"):  # held until the test opens the gate (bounded)
        deadline = time.monotonic() + 60
        while not os.path.exists(event["gate"]) and time.monotonic() < deadline:
            time.sleep(0.005)
    if event.get("die") and not os.path.exists(event["die"]):
        open(event["die"], "w").close()  # dies once: a retry of it succeeds
        os._exit(7)
    return {"id": event["id"], "pid": os.getpid()}
"""

# Instances without confinement: they write the execution log in the test's
# directory. The link and the worker's loop are the same in every runtime.
FUNCTIONS = """
[runtimes.process]
isolation = false

[[functions]]
name = "plain"
package = "pkgs/batch"
handler = "main:handler"
timeout_ms = 60000
max_instances = 1

[[functions]]
name = "safe"
package = "pkgs/batch"
handler = "main:handler"
timeout_ms = 60000
max_instances = 1
idempotent = true
"""

HEALTH = """
[health]
breaker_failures = 10
"""


@pytest.fixture
def daemon(short_tmp: Path) -> Iterator[Daemon]:
    write_package(short_tmp, "batch", HANDLER)
    with Daemon(write_config(short_tmp, FUNCTIONS, HEALTH)) as d:
        yield d


def status(daemon: Daemon, function: str) -> dict[str, Any]:
    with AdminClient(daemon.admin_socket, timeout_s=10) as client:
        found = [f for f in client.call("functions") if f["name"] == function]
    assert found, function
    return dict(found[0])


def die_with_a_batch(daemon: Daemon, function: str, root: Path) -> dict[str, httpx.Response]:
    """Make ``function``'s one instance die running "die" with b and c behind it
    on its link; the replies of every request by its id."""
    log, gate, marker = (root / f"{function}.{what}" for what in ("log", "gate", "died"))

    def event(rid: str, **more: str) -> dict[str, str]:
        return {"id": rid, "log": str(log), **more}

    with httpx.Client(base_url=daemon.url, timeout=90) as c:
        # Fast: after them the worker keeps a full window of credit (the first
        # requests of an instance pay for its first calls).
        for _ in range(3):
            warm = c.post(f"/v1/invoke/{function}", json=event("warm"))
            assert warm.status_code == 200, warm.text
        replies: dict[str, Future[httpx.Response]] = {}
        with ThreadPoolExecutor(5) as pool:
            replies["x"] = pool.submit(
                c.post, f"/v1/invoke/{function}", json=event("x", gate=str(gate))
            )
            assert wait_until(lambda: executions(log).count("x") == 1, WAIT_S)
            queued = [("die", {"die": str(marker)}), ("b", {}), ("c", {}), ("d", {})]
            for n, (rid, more) in enumerate(queued, 1):
                replies[rid] = pool.submit(
                    c.post, f"/v1/invoke/{function}", json=event(rid, **more)
                )
                # In this order in the daemon's queue, before the gate opens.
                assert wait_until(lambda n=n: status(daemon, function)["queued"] == n, WAIT_S)
            gate.touch()
            return {rid: future.result(90) for rid, future in replies.items()}


def executions(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_a_plain_function_loses_only_the_request_that_started(
    daemon: Daemon, short_tmp: Path
) -> None:
    replies = die_with_a_batch(daemon, "plain", short_tmp)
    # The one that started: lost (not idempotent, never run again).
    assert replies["die"].status_code == 502, replies["die"].text
    assert replies["die"].json()["error"]["code"] == "instance_lost"
    # The ones sent with it never started: answered by the replacement instance.
    for rid in ("x", "b", "c", "d"):
        assert replies[rid].status_code == 200, (rid, replies[rid].text)
        assert replies[rid].json()["id"] == rid
    assert replies["b"].json()["pid"] != replies["x"].json()["pid"]
    assert sorted(executions(short_tmp / "plain.log")) == sorted(
        ["warm"] * 3 + ["x", "die", "b", "c", "d"]
    )
    counters = status(daemon, "plain")["counters"]
    # b and c were on the dead instance's link (requeued), d was still queued here.
    assert counters.get("requeued_undelivered", 0) == 2, counters
    assert counters.get("instance_lost", 0) == 1 and counters.get("retried", 0) == 0, counters


def test_an_idempotent_function_retries_the_started_one_and_requeues_the_rest(
    daemon: Daemon, short_tmp: Path
) -> None:
    replies = die_with_a_batch(daemon, "safe", short_tmp)
    for rid in ("x", "die", "b", "c", "d"):
        assert replies[rid].status_code == 200, (rid, replies[rid].text)
        assert replies[rid].json()["id"] == rid
    # "die" ran twice (its retry, as for any idempotent request in flight);
    # b and c, on the link behind it, once.
    runs = executions(short_tmp / "safe.log")
    assert sorted(runs) == sorted(["warm"] * 3 + ["x", "die", "die", "b", "c", "d"]), runs
    counters = status(daemon, "safe")["counters"]
    assert counters.get("retried", 0) == 1, counters
    assert counters.get("requeued_undelivered", 0) == 2, counters


def test_a_batch_serves_in_order_without_loss(daemon: Daemon, short_tmp: Path) -> None:
    """Many concurrent fast requests on one instance: every one answered, each run once."""
    log = short_tmp / "many.log"
    ids = [f"r{i}" for i in range(200)]

    def one(rid: str) -> httpx.Response:
        with httpx.Client(base_url=daemon.url, timeout=90) as c:
            return c.post("/v1/invoke/plain", json={"id": rid, "log": str(log)})

    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(one, ids))
    assert [r.status_code for r in replies] == [200] * len(ids)
    assert [r.json()["id"] for r in replies] == ids
    assert sorted(executions(log)) == sorted(ids)
    assert status(daemon, "plain")["instances"]["starting"] == 0
