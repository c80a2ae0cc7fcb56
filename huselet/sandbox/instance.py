"""A fork instance's first steps after the clone, written to touch few pages.

Right after the clone an instance shares every page with its zygote; each
page it writes — an object's reference count, a code object warming up, a
pool it allocates from — becomes its own private copy (bench_density: PSS per
idle instance). So everything that can be decided in the zygote is decided
there, once, in :class:`InstanceSetup` (built after the function's init code,
before the zygote freezes its heap): the signal dispositions to reset, whether
the signal mask needs clearing, every confinement step with its arguments
already converted (:class:`~huselet.sandbox.confine.InstanceConfinement`).
The child then only makes calls: :func:`instance_main`.

What the child does: put the link on fd 3 and the output pipe on 1/2, close
every other descriptor (the control socket and anything the function's init
code opened), reset changed signal handlers, start a new session, confine
itself and serve. ``random`` needs no reseed here: if init code imported it,
its own at-fork hook reseeds it in every child (the clone runs Python's
after-fork hooks); if not, it is seeded when first imported.
"""

from __future__ import annotations

import _signal
import gc
import os
import signal
import socket
import sys
import traceback
from typing import Any, NoReturn

from huselet.sandbox import linux
from huselet.sandbox.confine import InstanceConfinement, SandboxError, SandboxPlan
from huselet.worker import sdk

EXIT_INSTANCE_SETUP = 70
LINK_FD = 3

# The dispositions a freshly exec'd Python starts with: SIGINT raises
# KeyboardInterrupt, SIGPIPE and SIGXFSZ are ignored (errors surface as
# exceptions), everything else is the default.
_FRESH = {
    signal.SIGINT: signal.default_int_handler,
    signal.SIGPIPE: signal.SIG_IGN,
    signal.SIGXFSZ: signal.SIG_IGN,
}
_SIGTERM = int(signal.SIGTERM)
_INSTANCE_ID_KEY = b"HUSELET_INSTANCE_ID"


def signals_to_reset() -> list[tuple[int, Any]]:
    """Signals whose disposition differs from a fresh interpreter's (found once, in the zygote).

    Resetting all ~64 in every child costs ~0.4 ms; usually this list is empty.
    """
    changed: list[tuple[int, Any]] = []
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        want: Any = _FRESH.get(sig, signal.SIG_DFL)
        try:
            if signal.getsignal(sig) is not want:
                # Plain ints: _signal.signal refuses the Handlers enum for SIG_DFL/SIG_IGN.
                changed.append((int(sig), want if callable(want) else int(want)))
        except (OSError, ValueError):
            pass
    return changed


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    os._exit(128 + _SIGTERM)


class InstanceSetup:
    """What every instance of one zygote does first, decided once in the zygote."""

    def __init__(self, plan: SandboxPlan, keep_in_tmp: list[str]) -> None:
        self.plan = plan
        self.signals = signals_to_reset()  # after init code: it may have installed handlers
        # The child inherits this thread's mask: clear it only if something is blocked.
        self.unmask = bool(_signal.pthread_sigmask(_signal.SIG_BLOCK, ()))
        self.confinement = InstanceConfinement(plan, keep_in_tmp)
        self.death_signal = linux.prepared_prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)

    def reset_signals(self) -> None:
        # _signal, not signal: the wrappers convert to and from enums (pages of enum code).
        if self.unmask:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, ())
        for sig, want in self.signals:
            try:
                _signal.signal(sig, want)
            except (OSError, ValueError):
                pass
        if os.getpid() == 1:
            # PID 1 of a namespace ignores signals it has no handler for, even
            # from outside: without this, terminate() would be a no-op.
            _signal.signal(_SIGTERM, _exit_on_sigterm)


def instance_main(
    setup: InstanceSetup,
    handler: Any,
    msg: dict[str, Any],
    fds: list[int],
    ctl: socket.socket,
) -> NoReturn:
    """The cloned child: set up, confine and serve; never returns."""
    code = EXIT_INSTANCE_SETUP
    try:
        link_fd, out_fd = fds[:2]
        ctl.detach()  # its number is closed below; the object must not close a reused fd later
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        if link_fd != LINK_FD:
            os.dup2(link_fd, LINK_FD)
        os.closerange(LINK_FD + 1, 1 << 20)  # close_range(2): the control socket, init code's files
        setup.reset_signals()
        os.setsid()
        setup.confinement.apply()
        # os.environ's own __setitem__ runs four Python functions (key and value
        # encoders) and cost each instance ~30 KB of copied pages: the two
        # stores it makes — the C environment a child process inherits, and the
        # mapping's bytes table — are made directly. Extra variables (rare)
        # take the ordinary way.
        instance_id = msg["id"].encode()
        os.putenv(_INSTANCE_ID_KEY, instance_id)
        os.environ._data[_INSTANCE_ID_KEY] = instance_id  # type: ignore[attr-defined]
        env = msg.get("env")
        if env:
            environ = os.environ
            for key, value in env.items():
                environ[key] = value
        gc.enable()
        # Our parent is the daemon (CLONE_PARENT). Had it died already, the link
        # would be closed: serve() ends at once.
        setup.death_signal()
        link = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=LINK_FD)
        # No link-watcher thread: the daemon is this process's parent (CLONE_PARENT)
        # and kills it whenever it drops it, and its death kills it (the death
        # signal above). A second thread would cost every idle instance its stack,
        # thread state and a malloc arena, and a second task against the uid's
        # RLIMIT_NPROC (pids) — half as many instances per function.
        plan = setup.plan
        code = sdk.serve(
            link,
            msg["id"],
            msg["token"],
            plan.package,
            plan.handler,
            handler=handler,
            watch_hangup=False,
            streams_installed=True,  # by the zygote (huselet.sandbox.zygote)
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
