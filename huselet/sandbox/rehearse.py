"""A zygote's rehearsal of what each instance does first, so the instances need not.

CPython 3.11 writes into a function's code object while it warms up (call
counters, then the specialised "quickened" instructions and their inline
caches). Code that runs for the first time in a forked instance therefore
dirties — copies — the pages holding those code objects, in every instance.
Running the instance's first steps a few times in the zygote, before its
heap is frozen, leaves that code quickened in the pages all instances share:
the link handshake (HELLO, WELCOME, READY and PULL frames through a
socketpair with the worker's own :class:`~huselet.worker.sdk.Link`) and the
request/result codecs. Nothing of it outlives the rehearsal: no handler is
called, no stream or global of the worker is touched.
"""

from __future__ import annotations

import socket

from huselet.worker import sdk
from protocol import link as wire
from protocol.frames import DEFAULT_MAX_FRAME

ROUNDS = 16  # past 3.11's warm-up (8 calls) and the first specialisations


def rehearse(rounds: int = ROUNDS) -> None:
    """Run the rehearsal; an optimisation only, so a sandbox that forbids it skips it."""
    try:
        worker_end, daemon_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        return
    try:
        worker, daemon = sdk.Link(worker_end), sdk.Link(daemon_end)
        for _ in range(rounds):
            worker.send(wire.Hello(wire.PROTO_VERSION, "rehearsal", "token", 1).encode())
            wire.Hello.decode(daemon.receive())
            daemon.send(wire.Welcome(wire.PROTO_VERSION, "rehearsal", DEFAULT_MAX_FRAME).encode())
            wire.Welcome.decode(worker.receive())
            worker.send(wire.READY_FRAME, wire.Pull(1).encode())
            wire.message_type(daemon.receive())
            wire.Pull.decode(daemon.receive())
            daemon.send(wire.Request("r", b"{}", "json", 1000).encode())
            wire.Request.decode(worker.receive())
            worker.send(wire.Result("r", ok=False, error=wire.ErrorInfo("T", "m")).encode())
            wire.Result.decode(daemon.receive())
    finally:
        worker_end.close()
        daemon_end.close()
