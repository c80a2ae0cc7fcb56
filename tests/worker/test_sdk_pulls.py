"""The worker's credit window and its order of work, against a real worker process.

A real worker (``python -m huselet.worker``) talks to a minimal daemon played
by this test over a real Unix socket. It keeps up to ``PULL_WINDOW`` requests
of credit while its handler is fast, topped up by half a window at a time;
it runs requests in order and writes each RESULT before it starts the next
(so a death leaves the daemon nothing ambiguous); a request whose deadline
passed while it waited is answered without running.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import write_package

from huselet.worker.sdk import PULL_WINDOW, Link
from protocol.frames import encode_frame
from protocol.link import (
    ERROR_DEADLINE,
    PROTO_VERSION,
    PULL,
    READY,
    RESULT,
    Hello,
    Request,
    Result,
    Welcome,
    message_type,
    pull_count,
)

HANDLER = """
import json, os, time
def handler(event, context):
    with open(os.path.join(os.path.dirname(__file__), "ran"), "a") as log:
        log.write(event["id"] + "\\n")
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("exit"):
        os._exit(9)
    if event.get("big"):
        return "x" * event["big"]
    return event["id"]
"""


@pytest.fixture
def worker(short_tmp: Path) -> Iterator[tuple[Link, Path]]:
    """A worker past READY and its first PULL{1}; its link, and its execution log."""
    pkg = write_package(short_tmp, "w", HANDLER)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(short_tmp / "link.sock"))
    listener.listen(1)
    listener.settimeout(30)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HUSELET_LINK": listener.getsockname(),
        "HUSELET_INSTANCE_ID": "w-1",
        "HUSELET_TOKEN": "t",
        "HUSELET_FUNCTION": "w",
        "HUSELET_PACKAGE": str(pkg),
        "HUSELET_HANDLER": "main:handler",
    }
    proc = subprocess.Popen([sys.executable, "-m", "huselet.worker"], env=env)
    try:
        conn, _ = listener.accept()
        conn.settimeout(30)
        link = Link(conn)
        Hello.decode(link.receive())
        link.send(Welcome(PROTO_VERSION, "w", 1 << 20).encode())
        assert message_type(link.receive()) == READY
        assert pull_count(link.receive()) == 1
        yield link, pkg / "ran"
    finally:
        proc.kill()
        proc.wait(30)
        listener.close()


def request(rid: str, timeout_ms: int = 60_000, **event: Any) -> bytes:
    body = json.dumps({"id": rid, **event}).encode()
    return encode_frame(Request(rid, body, "json", timeout_ms).encode())


def frames(link: Link, n: int) -> list[tuple[str, Any]]:
    """The next ``n`` frames: ("result", Result) or ("pull", n)."""
    out: list[tuple[str, Any]] = []
    for _ in range(n):
        msg = link.receive()
        kind = message_type(msg)
        assert kind in (RESULT, PULL), msg
        out.append((kind, Result.decode(msg) if kind == RESULT else pull_count(msg)))
    return out


def test_a_fast_worker_keeps_a_window_of_credit_topped_up_by_half(
    worker: tuple[Link, Path],
) -> None:
    link, _ = worker
    link.sock.sendall(request("r0"))
    (_, first), pull = frames(link, 2)
    assert first.id == "r0" and pull == ("pull", PULL_WINDOW)
    link.sock.sendall(b"".join(request(f"r{i}") for i in range(1, PULL_WINDOW + 1)))
    got = frames(link, PULL_WINDOW + 2)
    assert [(k, v.id if k == RESULT else v) for k, v in got] == [
        (RESULT, "r1"),
        (RESULT, "r2"),
        (PULL, 2),
        (RESULT, "r3"),
        (RESULT, "r4"),
        (PULL, 2),
    ]


def test_each_result_is_on_the_link_before_the_next_request_starts(
    worker: tuple[Link, Path],
) -> None:
    link, ran = worker
    link.sock.sendall(request("r0"))
    frames(link, 2)  # its RESULT and PULL{window}
    # r2 kills the worker as it starts: r1's RESULT must already be written.
    link.sock.sendall(request("r1") + request("r2", exit=True) + request("r3"))
    (kind, result), *_ = frames(link, 1)
    assert kind == RESULT and result.id == "r1" and result.ok
    with pytest.raises(Exception, match="closed the link"):
        link.receive()
    assert ran.read_text().split() == ["r0", "r1", "r2"]  # r3 never started


def test_a_request_that_expired_while_it_waited_is_not_run(worker: tuple[Link, Path]) -> None:
    link, ran = worker
    link.sock.sendall(request("r0"))
    frames(link, 2)
    # r2 has 1 ms and waits behind r1's 200 ms: it is answered, not run.
    link.sock.sendall(request("r1", sleep=0.2) + request("r2", timeout_ms=1))
    got = [v for k, v in frames(link, 3) if k == RESULT]
    assert [r.id for r in got] == ["r1", "r2"]
    assert got[0].ok and not got[1].ok and got[1].error.type == ERROR_DEADLINE
    assert ran.read_text().split() == ["r0", "r1"]


def test_results_of_every_size_are_framed_and_one_over_the_limit_is_an_error(
    worker: tuple[Link, Path],
) -> None:
    # Small results go through the worker's reused packer, large ones (over
    # SMALL_PAYLOAD) through encode_frame; one over the link's frame limit
    # (the WELCOME said 1 MiB) becomes a ResultTooLarge error, and the worker
    # goes on serving.
    link, _ = worker
    sizes = {"small": 10, "large": 200 * 1024, "over": 2 << 20, "after": 10}
    for rid, size in sizes.items():
        link.sock.sendall(request(rid, big=size))
        result = next(r for kind, r in iter(lambda: frames(link, 1)[0], None) if kind == RESULT)
        assert result.id == rid
        if rid == "over":
            assert not result.ok and result.error is not None
            assert result.error.type == "ResultTooLarge"
        else:
            assert result.ok and result.body == b"x" * size, (rid, len(result.body))
