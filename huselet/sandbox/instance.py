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
import _socket
import gc
import os
import signal
import socket
import sys
import time
import traceback
from typing import Any, NoReturn

import msgpack

from huselet.sandbox import linux
from huselet.sandbox.confine import InstanceConfinement, SandboxError, SandboxPlan
from huselet.worker import sdk
from huselet.worker.entries import HandlerEntry, WsgiEntry
from protocol.errors import ProtocolError
from protocol.frames import HEADER_SIZE as _HEADER_SIZE
from protocol.link import WELCOME

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
_AF_UNIX = int(socket.AF_UNIX)
_SOCK_STREAM = int(socket.SOCK_STREAM)
_SIG_SETMASK = int(_signal.SIG_SETMASK)
_RECEIVE_BYTES = sdk.RECEIVE_BYTES
# Entries whose start(function) only records the name: started once in the zygote.
_NAME_ONLY_START = (HandlerEntry, WsgiEntry)


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
    """What every instance of one zygote does first, decided once in the zygote.

    Besides the decisions, every object the instance's way to idle uses is
    made here — its link socket (not yet bound to a descriptor), the link's
    frame decoder, the HELLO pieces, an environment slot, and the C functions
    and bound methods it calls — and handed over in one tuple
    (:attr:`flat`): :func:`instance_main` then looks up no attribute or global
    (an unquickened lookup writes to the name's string and the type cache)
    and allocates next to nothing (each object made in the child lands on a
    page it copies).
    """

    def __init__(self, plan: SandboxPlan, keep_in_tmp: list[str], handler: Any = None) -> None:
        self.plan = plan
        # An entry whose start only records the function's name starts here, once:
        # no instance dirties a page for it, and READY can go with HELLO.
        self.started = type(handler) in _NAME_ONLY_START
        if self.started:
            handler.start(plan.function)
        signals = signals_to_reset()  # after init code: it may have installed handlers
        # The child inherits this thread's mask: clear it only if something is blocked.
        unmask = bool(_signal.pthread_sigmask(_signal.SIG_BLOCK, ()))
        self.confinement = InstanceConfinement(plan, keep_in_tmp)
        death = linux.prepared_prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        # socket.socket's own __init__ is Python (enum conversions): the child
        # only binds this object to LINK_FD with the C initialiser.
        sock = socket.socket.__new__(socket.socket)
        sock._io_refs = 0  # type: ignore[attr-defined]  # what socket.socket.__init__ sets
        sock._closed = False  # type: ignore[attr-defined]
        self.link = sdk.Link(sock)
        prepared = sdk.PreparedHello()
        hello = (prepared.head, prepared.token_key, prepared.pid_key, prepared.pack)
        # A slot in os.environ's table now, so the child's store replaces a
        # value instead of growing (reallocating) the table.
        environ: dict[bytes, bytes] = os.environ._data  # type: ignore[attr-defined]
        environ.setdefault(_INSTANCE_ID_KEY, b"")
        self.flat = (
            (os.dup2, os.closerange, _socket.socket.detach, os.setsid, os.getpid),
            (unmask, _signal.pthread_sigmask, tuple(signals), _signal.signal, _exit_on_sigterm),
            (self.confinement.apply, os.putenv, environ, str.encode, death.fn, death.args),
            (_socket.socket.__init__, (sock, _AF_UNIX, _SOCK_STREAM, 0, LINK_FD), os.set_blocking),
            (sock.sendall, sock.recv, hello, b"".join, self.link, msgpack.unpackb, sdk.READY_PULL),
            (self.started, plan.function),
        )


class _Exit(Exception):
    """Leave :func:`instance_main` with ``code`` (already reported)."""

    def __init__(self, code: int) -> None:
        self.code = code


def instance_main(
    setup: InstanceSetup,
    handler: Any,
    request: list[Any],
    fds: list[int],
    ctl: socket.socket,
) -> NoReturn:
    """The cloned child: set up, confine, say HELLO and READY, then serve; never returns.

    One flat function up to the first request, on its prebuilt tuple: each
    Python function it called would be pages (function, code, names) it
    copies. It idles in the ``recv`` below; the collector, the request loop
    and anything else deferred are paid for by the first request.
    """
    code = EXIT_INSTANCE_SETUP
    try:
        fds_calls, signals, confinement, link_init, wire, (started, own_name) = setup.flat
        dup2, closerange, detach, setsid, getpid = fds_calls
        link_fd = fds[0]
        out_fd = fds[1]
        detach(ctl)  # its number is closed below; the object must not close a reused fd later
        dup2(out_fd, 1)
        dup2(out_fd, 2)
        if link_fd != LINK_FD:
            dup2(link_fd, LINK_FD)
        closerange(LINK_FD + 1, 1 << 20)  # close_range(2): the control socket, init code's files
        # Signals, with _signal: the signal module's wrappers convert to and from enums.
        unmask, sigmask, changed, set_handler, on_sigterm = signals
        if unmask:
            sigmask(_SIG_SETMASK, ())
        for sig, want in changed:
            try:
                set_handler(sig, want)
            except (OSError, ValueError):
                pass
        if getpid() == 1:
            # PID 1 of a namespace ignores signals it has no handler for, even
            # from outside: without this, terminate() would be a no-op.
            set_handler(_SIGTERM, on_sigterm)
        setsid()
        confine, putenv, environ, encode, death, death_args = confinement
        confine()
        # os.environ's own __setitem__ runs four Python functions (key and value
        # encoders): the two stores it makes — the C environment a child
        # process inherits, and the mapping's bytes table — are made directly.
        # Extra variables (rare) take the ordinary way.
        _, instance_id, token, env, _ = request  # forkloop.fork_request's array
        value = encode(instance_id)
        putenv(_INSTANCE_ID_KEY, value)
        environ[_INSTANCE_ID_KEY] = value
        if env:
            for key, value in env.items():
                os.environ[key] = value
        # Our parent is the daemon (CLONE_PARENT). Had it died already, the link
        # would be closed: the handshake below fails at once.
        if death(*death_args) < 0:
            raise SandboxError(f"death signal: {linux.failed('prctl')}")
        # No link-watcher thread: the daemon is this process's parent (CLONE_PARENT)
        # and kills it whenever it drops it, and its death kills it (the death
        # signal above). A second thread would cost every idle instance its stack,
        # thread state and a malloc arena, and a second task against the uid's
        # RLIMIT_NPROC (pids) — half as many instances per function.
        init, init_args, set_blocking = link_init
        init(*init_args)
        sendall, recv, hello, join, link, unpackb, ready_pull = wire
        try:
            set_blocking(LINK_FD, True)  # a socket dialled by the daemon arrives non-blocking
            # HELLO (sdk.PreparedHello, inlined: one frame fewer to copy).
            head, token_key, pid_key, pack = hello
            body = join((head, pack(instance_id), token_key, pack(token), pid_key))
            body += pack(getpid())
            hello_frame = len(body).to_bytes(_HEADER_SIZE, "big") + body
            # Started in the zygote: READY (and the first PULL) go with HELLO, so the
            # daemon finds READY behind HELLO and never waits for it on its own.
            sendall(hello_frame + ready_pull if started else hello_frame)
            data = recv(_RECEIVE_BYTES)
            first = None
            queued = 0  # bytes behind WELCOME in the same read (a request)
            if len(data) == _HEADER_SIZE + int.from_bytes(data[:_HEADER_SIZE], "big"):
                # The whole WELCOME in one read, as the daemon sends it. Not
                # msgpack (msgpack's errors are ValueErrors): the decoder below
                # says so as the SDK would (MalformedFrame).
                try:
                    first = unpackb(data[_HEADER_SIZE:], raw=False, strict_map_key=True)
                except ValueError:
                    first = None
            if type(first) is not dict:
                link.decoder.receive_data(data)
                first = link.receive()  # a request may follow WELCOME in the same read
                queued = link.decoder.buffered
            function = first.get("function")
            max_frame = first.get("max_frame")
            if first.get("t") != WELCOME or type(function) is not str or type(max_frame) is not int:
                welcome = sdk.welcome_of(first)  # refused (None) or malformed (raises)
                if welcome is None:
                    raise _Exit(sdk.EXIT_LINK_FAILED)
                function, max_frame = welcome.function, welcome.max_frame
            link.decoder.max_frame = max_frame
            if not started:
                try:
                    handler.start(function)
                except BaseException as exc:
                    raise _Exit(sdk.fatal(link, setup.plan.handler, exc)) from None
                sendall(ready_pull)
            elif function != own_name:  # (never: one zygote per function)
                handler.start(function)
            # Idle here. The zygote forked with its collector off and its heap
            # frozen: the collector comes back with the first message, not before.
            data = recv(_RECEIVE_BYTES) if not queued else b""
        except (OSError, ProtocolError, sdk.LinkClosed) as exc:
            code = sdk.link_failed(exc)
        else:
            gc.enable()
            # The request loop counts a queued request's deadline from its read.
            link.received_at = time.monotonic()
            link.decoder.receive_data(data)  # nothing (the daemon hung up) ends the loop at once
            code = sdk.serve_ready(link, handler, function, instance_id)
    except _Exit as done:
        code = done.code
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
