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
instance group's n directories and of its own group's n; it opens each
``cgroup.procs`` (chowned to its uid by the daemon) with its own credentials
and writes ``0`` (itself), clones, and goes home once no request is waiting
(:class:`Placement`). The daemon needs no thread trip and no round trip per
start: requests queue back to back. It never kills the zygote with a group it
empties (:meth:`huselet.runtime.cgrouppool.CgroupPool.release` spares it).

What the child does, and why it is written to touch few pages:
:mod:`huselet.sandbox.instance`.
"""

from __future__ import annotations

import array
import gc
import os
import select
import socket
import sys
import traceback
from typing import Any

from huselet.sandbox import linux
from huselet.sandbox.confine import SandboxError, SandboxPlan, enter_function_sandbox
from huselet.sandbox.instance import InstanceSetup, instance_main
from huselet.sandbox.rehearse import rehearse
from huselet.worker import output, sdk
from protocol.frames import FrameDecoder, encode_frame

MAX_PACKET = 256 * 1024
MAX_FDS = 16
CONFIG_TIMEOUT_S = 30.0
EXIT_CONFIG = 2
EXIT_FATAL = 3


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


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def enter_cgroup(dir_fds: list[int]) -> None:
    """Move this process into the group whose directories ``dir_fds`` are (O_PATH handles)."""
    for dir_fd in dir_fds:
        fd = os.open("cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            os.write(fd, b"0")  # 0: the writer itself
        finally:
            os.close(fd)


class Placement:
    """Where a self-placing zygote is: its own group, or the last instance's.

    After a clone it stays in the instance's group while it answers and reads
    the next request — the pages it copies then (every page it writes is
    shared with the child just made) are charged to that instance, as when
    the daemon moved it — and goes home as soon as no request is waiting.
    """

    def __init__(self) -> None:
        self.home: list[int] = []  # handles of its own group while it is away

    def enter(self, target: list[int], home: list[int]) -> None:
        self.leave_home_handles()
        self.home = home
        enter_cgroup(target)

    def go_home(self) -> bool:
        """Back into its own group (no-op when there); False if that failed."""
        if not self.home:
            return True
        try:
            enter_cgroup(self.home)
        except OSError as exc:
            print(f"huselet zygote: cannot return to its own cgroup: {exc}", file=sys.stderr)
            return False
        self.leave_home_handles()
        return True

    def leave_home_handles(self) -> None:
        _close_all(self.home)
        self.home = []


def _waiting(poller: select.poll) -> bool:
    """True if another request is already queued on the control socket (``poller``'s).

    A poll, not a non-blocking peek: that raised (built) an exception each
    time, and every page the zygote writes between two clones stays behind,
    a private copy, in the instance before it. Closed or failing counts as
    waiting (POLLHUP, POLLERR): the next receive says so.
    """
    return bool(poller.poll(0))


def serve_forks(ctl: socket.socket, setup: InstanceSetup, handler: Any) -> int:
    clone = linux.Cloner(linux.CLONE_PARENT | setup.plan.instance_clone_flags())
    where = Placement()
    poller = select.poll()
    poller.register(ctl, select.POLLIN)
    while True:
        if where.home and not _waiting(poller) and not where.go_home():
            # Stuck in an instance's group, which is emptied when that instance
            # ends: exit now and let the daemon build a new zygote.
            return EXIT_FATAL
        msg, fds = receive(ctl)
        if msg is None:
            _close_all(fds)
            return 0  # the daemon closed the control socket
        kind = msg.get("t")
        if kind == "fork":
            place = msg.get("place", 0)
            place = place if isinstance(place, int) and place >= 0 else -1
            if place < 0 or len(fds) < 2 + 2 * place:
                _close_all(fds)
                failed = {"t": "fork_failed", "seq": msg.get("seq"), "error": "descriptors missing"}
                send(ctl, failed)
                continue
            if place:
                try:
                    where.enter(fds[2 : 2 + place], fds[2 + place : 2 + 2 * place])
                except OSError as exc:
                    _close_all(fds[: 2 + place])  # the home handles are kept to go back
                    failed = {"t": "fork_failed", "seq": msg["seq"], "errno": exc.errno}
                    send(ctl, {**failed, "error": f"cannot enter the instance's cgroup: {exc}"})
                    continue
                fds = fds[: 2 + place]
            # Whatever this loop allocated since the last fork joins the frozen
            # heap, and the collector's young count restarts at zero: else the
            # child's first allocation after gc.enable() runs a collection over
            # those objects and copies every page they sit on.
            gc.freeze()
            try:
                pid = clone()
            except OSError as exc:
                _close_all(fds)
                # The errno tells the daemon a host limit (EAGAIN, ENOMEM) from a fault.
                failed = {"t": "fork_failed", "seq": msg["seq"], "error": str(exc)}
                send(ctl, {**failed, "errno": exc.errno})
                continue
            if pid == 0:
                # The child closes every descriptor but its link and output
                # before any function code runs: no cgroup handle reaches it.
                instance_main(setup, handler, msg, fds, ctl)
            _close_all(fds)
            send(ctl, {"t": "forked", "seq": msg["seq"], "pid": pid})
        elif kind == "stop":
            _close_all(fds)
            return 0
        else:
            _close_all(fds)  # unknown requests are ignored: a newer daemon may send more


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
    _close_all(fds)
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
    setup = InstanceSetup(plan, keep_in_tmp)
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
