"""bench/floor_proxy.py: the floor bench_invoke compares the daemon's CPU with must
forward real calls, or its cheaper rows would be a broken process, not a floor.

A real floor process with two real workers running an echo handler, loaded
with the framed client huselet ships: every pipelined call comes back 200 with
its own event echoed (a reply matched to the wrong call would show); so do
HTTP requests on one kept-alive connection.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from huselet.client.framed import FramedClient

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def floor(tmp_path: Path) -> Iterator[tuple[str, str]]:
    package = tmp_path / "echo"
    package.mkdir()
    (package / "main.py").write_text("def handler(event, context):\n    return event\n")
    port, http_port = _free_port(), _free_port()
    proc = subprocess.Popen(
        [sys.executable, "bench/floor_proxy.py", "--home", str(tmp_path / "floor"),
         "--package", str(package), "--port", str(port), "--http-port", str(http_port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the workers said READY (or it died)
        assert line.startswith("listening"), (line, proc.poll())
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{http_port}"
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_floor_answers_pipelined_calls_each_with_its_own_reply(
    floor: tuple[str, str],
) -> None:
    events = [json.dumps({"name": f"n{i}"}).encode() for i in range(200)]
    with FramedClient.connect(floor[0], timeout=60) as client:
        replies = client.call_many(("noop", e, "json") for e in events)
    assert [r.status for r in replies] == [200] * len(events)
    assert [json.loads(r.body) for r in replies] == [json.loads(e) for e in events]


def test_the_floor_answers_http_requests_on_a_kept_alive_connection(
    floor: tuple[str, str],
) -> None:
    with httpx.Client(base_url=floor[1], timeout=60) as client:
        for i in range(20):
            reply = client.post("/v1/invoke/echo", json={"i": i})
            assert reply.status_code == 200 and reply.json() == {"i": i}
