"""The zygote: one pre-initialised process per function that forks its instances.

Started by the daemon as ``python -I -B -u -m huselet.sandbox.zygote
--control-fd N`` (the same safe spawn as a ``process`` worker). Over the
control socket (``SOCK_SEQPACKET``: one frame per packet, descriptors in
``SCM_RIGHTS``) it receives its :class:`~huselet.sandbox.confine.SandboxPlan`,
confines itself, imports the worker SDK and the function's handler (running
the function's init code), freezes the heap and answers ``ready``. Then, for
each ``fork`` request — carrying the instance id, token and two descriptors
the daemon made for it: the connected link and the output pipe — it clones
one child and reports its pid. The zygote never waits for or signals its
children.

How the daemon observes instance exits: the clone uses ``CLONE_PARENT``, so
each instance is born a *direct child of the daemon*, not of the zygote. The
daemon reaps it with ``wait4`` (true exit status, rusage), watches it through
a pidfd, and loses nothing if the zygote dies — nothing reported by a process
that runs function code is trusted for exit statuses. The daemon checks each
reported pid is its own child, in the instance's cgroup, before adopting it.

Where an instance is charged: the zygote is in the instance's cgroup for
the moment of the clone, so the child is *born* there — its page tables,
kernel stack and every page it copies count against its own limit, never the
zygote's (v1 can no longer move charges afterwards). Either the daemon moves
it there before sending the request, or (``place`` = n in the request, cgroup
v1) the zygote moves *itself*: the request carries ``O_PATH`` handles of the
instance group's n directories; it opens each ``cgroup.procs`` (chowned to
its uid by the daemon) with its own credentials and writes ``0`` (itself),
clones, and goes home — through its own group's ``cgroup.procs``, opened once
from the handles of a ``home`` message sent right after ``ready`` — once no
request is waiting (:mod:`huselet.sandbox.forkloop`). The daemon needs no
thread trip and no round trip per start: requests queue back to back. It
never kills the zygote with a group it empties
(:meth:`huselet.runtime.cgrouppool.CgroupPool.release` spares it).

What the child does, and why it is written to touch few pages:
:mod:`huselet.sandbox.instance`.
"""

from __future__ import annotations

import array
import gc
import os
import socket
import sys
import traceback
from typing import Any

from huselet.sandbox import forkloop, linux
from huselet.sandbox.confine import SandboxError, SandboxPlan, enter_function_sandbox
from huselet.sandbox.instance import InstanceSetup, instance_main
from huselet.sandbox.rehearse import rehearse
from huselet.worker import output, sdk
from protocol.frames import FrameDecoder, encode_frame

MAX_PACKET = forkloop.MAX_PACKET
MAX_FDS = forkloop.MAX_FDS
CONFIG_TIMEOUT_S = 30.0
EXIT_CONFIG = 2
EXIT_FATAL = forkloop.EXIT_FATAL


def send(ctl: socket.socket, msg: dict[str, Any]) -> None:
    ctl.send(encode_frame(msg))


def receive(ctl: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One control packet and the descriptors it carried; (None, []) at EOF."""
    data, ancdata, _, _ = ctl.recvmsg(MAX_PACKET, socket.CMSG_SPACE(MAX_FDS * 4))
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
            fds.extend(arr)
    if not data:
        return None, fds
    decoder = FrameDecoder(max_frame=MAX_PACKET)
    decoder.receive_data(data)
    return decoder.next_frame(), fds


def serve_forks(ctl: socket.socket, setup: InstanceSetup, handler: Any) -> int:
    clone = linux.Cloner(linux.CLONE_PARENT | setup.plan.instance_clone_flags())

    def child(request: list[Any], fds: list[int]) -> None:
        instance_main(setup, handler, request, fds, ctl)

    return forkloop.serve(ctl, clone, child)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    gc.disable()  # no collections while init code runs: fewer pages touched before freeze
    try:
        control_fd = int(argv[argv.index("--control-fd") + 1])
    except (ValueError, IndexError):
        print("usage: python -m huselet.sandbox.zygote --control-fd N", file=sys.stderr)
        return EXIT_CONFIG
    ctl = socket.socket(fileno=control_fd)
    ctl.settimeout(CONFIG_TIMEOUT_S)
    try:
        msg, fds = receive(ctl)
    except (OSError, ValueError) as exc:
        print(f"huselet zygote: no configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    forkloop.close_all(fds)
    if msg is None or msg.get("t") != "config":
        print("huselet zygote: the first message must be config", file=sys.stderr)
        return EXIT_CONFIG
    plan = SandboxPlan.from_wire(msg["plan"])
    try:
        if os.environ.get("HUSELET_IMAGE"):
            # The image importer lives outside the sandbox's view of the host:
            # import it while the whole file system is still visible.
            import cache.importer
            import cache.reader  # noqa: F401
        keep_in_tmp = enter_function_sandbox(plan)
        handler = sdk.load_entry(plan.package, plan.handler)  # the app object is built here
    except BaseException as exc:
        traceback.print_exc()
        what = (
            "sandbox setup failed"
            if isinstance(exc, SandboxError)
            else f"handler {plan.handler} failed to load"
        )
        send(ctl, {"t": "fatal", "error": f"{what}: {type(exc).__name__}: {exc}"})
        return EXIT_FATAL
    # Everything imported so far is shared copy-on-write with every instance;
    # freezing moves it out of the collector's sight, so no instance's GC pass
    # touches (and copies) those pages.
    setup = InstanceSetup(plan, keep_in_tmp, handler)
    # The tagging streams, once here rather than in every instance (sdk.run
    # finds them installed): they write to fds 1 and 2, which each instance
    # points at its own output pipe.
    output.install()
    rehearse()  # the instances' first steps, quickened once here (huselet.sandbox.rehearse)
    gc.collect()
    gc.freeze()
    ctl.settimeout(None)
    send(ctl, {"t": "ready", "pid": os.getpid()})
    return serve_forks(ctl, setup, handler)


if __name__ == "__main__":
    raise SystemExit(main())
