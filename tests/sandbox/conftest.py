"""Fixtures of the sandbox tests: a real zygote whose daemon is the test."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import WAIT_S, write_package

from huselet.runtime.zygote import zygote_command
from huselet.sandbox.confine import SandboxPlan
from huselet.sandbox.zygote import receive
from protocol.frames import encode_frame

ECHO = """
def handler(event, context):
    return {"event": event, "instance": context.instance_id, "function": context.function_name}
"""


@pytest.fixture
def zygote(short_tmp: Path) -> Iterator[socket.socket]:
    """A ready zygote of ECHO; its control socket."""
    pkg = write_package(short_tmp, "echo", ECHO)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.settimeout(WAIT_S)
    proc = subprocess.Popen(
        [*zygote_command(), "--control-fd", str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    try:
        plan = SandboxPlan(function="echo", package=str(pkg), handler="main:handler", isolate=False)
        ours.send(encode_frame({"t": "config", "plan": plan.to_wire()}))
        ready, _ = receive(ours)
        assert ready is not None and ready["t"] == "ready", ready
        yield ours
    finally:
        ours.close()  # the zygote's end: it exits
        proc.wait(WAIT_S)
