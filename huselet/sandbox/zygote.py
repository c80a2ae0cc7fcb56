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

Where an instance is charged: the daemon moves the zygote into the
instance's cgroup for the moment of the clone, so the child is *born* there —
its page tables, kernel stack and every page it copies count against its own
limit, never the zygote's (v1 can no longer move charges afterwards).

What the child does (:func:`_instance_main`): put the link on fd 3 and the
output pipe on 1/2, close every other descriptor (the control socket and
anything the function's init code opened), reset changed signal handlers,
start a new session, confine itself and serve. ``random`` needs no reseed
here: if init code imported it, its own at-fork hook reseeds it in every
child (the clone runs Python's after-fork hooks); if not, it is seeded when
first imported. (Importing it here only to reseed would cost every instance
a second seeding and the module's pages.)
"""

from __future__ import annotations

import array
import gc
import os
import signal
import socket
import sys
import traceback
from typing import Any, NoReturn

from huselet.sandbox import linux
from huselet.sandbox.confine import (
    SandboxError,
    SandboxPlan,
    confine_instance,
    enter_function_sandbox,
)
from huselet.sandbox.rehearse import rehearse
from huselet.worker import sdk
from protocol.frames import FrameDecoder, encode_frame

MAX_PACKET = 256 * 1024
MAX_FDS = 8
CONFIG_TIMEOUT_S = 30.0
EXIT_CONFIG = 2
EXIT_FATAL = 3
EXIT_INSTANCE_SETUP = 70
LINK_FD = 3
_SIGNALS: list[tuple[int, Any]] | None = None


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


# The dispositions a freshly exec'd Python starts with: SIGINT raises
# KeyboardInterrupt, SIGPIPE and SIGXFSZ are ignored (errors surface as
# exceptions), everything else is the default.
_FRESH = {
    signal.SIGINT: signal.default_int_handler,
    signal.SIGPIPE: signal.SIG_IGN,
    signal.SIGXFSZ: signal.SIG_IGN,
}


def signals_to_reset() -> list[tuple[int, Any]]:
    """Signals whose disposition differs from a fresh interpreter's (found once, in the zygote).

    Resetting all ~64 in every child costs ~0.4 ms; usually this list is empty.
    """
    changed: list[tuple[int, Any]] = []
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        want = _FRESH.get(sig, signal.SIG_DFL)
        try:
            if signal.getsignal(sig) is not want:
                changed.append((sig, want))
        except (OSError, ValueError):
            pass
    return changed


def _reset_signals(changed: list[tuple[int, Any]]) -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig, want in changed:
        try:
            signal.signal(sig, want)
        except (OSError, ValueError):
            pass
    if os.getpid() == 1:
        # PID 1 of a namespace ignores signals it has no handler for, even
        # from outside: without this, terminate() would be a no-op.
        signal.signal(signal.SIGTERM, lambda *_: os._exit(128 + signal.SIGTERM))


def _instance_main(
    plan: SandboxPlan,
    keep_in_tmp: list[str],
    handler: Any,
    msg: dict[str, Any],
    fds: list[int],
    ctl: socket.socket,
) -> NoReturn:
    code = EXIT_INSTANCE_SETUP
    try:
        link_fd, out_fd = fds[:2]
        ctl.detach()  # its number is closed below; the object must not close a reused fd later
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        if link_fd != LINK_FD:
            os.dup2(link_fd, LINK_FD)
        os.closerange(LINK_FD + 1, 1 << 20)  # close_range(2): the control socket, init code's files
        _reset_signals(signals_to_reset() if _SIGNALS is None else _SIGNALS)
        os.setsid()
        confine_instance(plan, keep_in_tmp)
        os.environ["HUSELET_INSTANCE_ID"] = msg["id"]
        for key, value in msg.get("env", {}).items():
            os.environ[key] = value
        gc.enable()
        # Our parent is the daemon (CLONE_PARENT). Had it died already, the link
        # would be closed: serve() ends at once.
        linux.set_pdeathsig(signal.SIGKILL)
        link = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=LINK_FD)
        # No link-watcher thread: the daemon is this process's parent (CLONE_PARENT)
        # and kills it whenever it drops it, and its death kills it (the death
        # signal above). A second thread would cost every idle instance its stack,
        # thread state and a malloc arena, and a second task against the uid's
        # RLIMIT_NPROC (pids) — half as many instances per function.
        code = sdk.serve(
            link,
            msg["id"],
            msg["token"],
            plan.package,
            plan.handler,
            handler=handler,
            watch_hangup=False,
        )
    except SandboxError as exc:
        print(f"huselet instance: sandbox setup failed: {exc}", file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve_forks(ctl: socket.socket, plan: SandboxPlan, keep_in_tmp: list[str], handler: Any) -> int:
    flags = linux.CLONE_PARENT | plan.instance_clone_flags()
    while True:
        msg, fds = receive(ctl)
        if msg is None:
            _close_all(fds)
            return 0  # the daemon closed the control socket
        kind = msg.get("t")
        if kind == "fork":
            if len(fds) < 2:
                _close_all(fds)
                failed = {"t": "fork_failed", "seq": msg.get("seq"), "error": "descriptors missing"}
                send(ctl, failed)
                continue
            try:
                pid = linux.clone_process(flags)
            except OSError as exc:
                _close_all(fds)
                # The errno tells the daemon a host limit (EAGAIN, ENOMEM) from a fault.
                failed = {"t": "fork_failed", "seq": msg["seq"], "error": str(exc)}
                send(ctl, {**failed, "errno": exc.errno})
                continue
            if pid == 0:
                _instance_main(plan, keep_in_tmp, handler, msg, fds, ctl)
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
    global _SIGNALS
    _SIGNALS = signals_to_reset()  # after init code: it may have installed handlers
    rehearse()  # the instances' first steps, quickened once here (huselet.sandbox.rehearse)
    gc.collect()
    gc.freeze()
    ctl.settimeout(None)
    send(ctl, {"t": "ready", "pid": os.getpid()})
    return serve_forks(ctl, plan, keep_in_tmp, handler)


if __name__ == "__main__":
    raise SystemExit(main())
