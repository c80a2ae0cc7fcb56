"""Worker SDK main loop: connect, authenticate, load the handler, pull and serve.

Configuration comes from environment variables set by the runtime
(``HUSELET_LINK`` — or ``HUSELET_LINK_FD``, an already connected socket the
runtime dialled for a sandbox that cannot see the daemon's socket —
``HUSELET_INSTANCE_ID``, ``HUSELET_TOKEN``, ``HUSELET_FUNCTION``,
``HUSELET_PACKAGE``, ``HUSELET_HANDLER``, ``HUSELET_KIND``); the token is
removed from the environment before any function code runs. A zygote calls
:func:`serve` directly with the same parameters and the entry it loaded
before forking. How each function kind is called: :mod:`huselet.worker.entries`.
"""

from __future__ import annotations

import importlib
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import msgpack

from huselet.worker import names, output
from huselet.worker.entries import (
    Entry,
    decode_event,
    encode_value,
    make_entry,
    preload,
)
from protocol.errors import ProtocolError
from protocol.frames import (
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    FrameDecoder,
    FrameEncoder,
    encode_frame,
)
from protocol.link import (
    ERROR_DEADLINE,
    HELLO,
    PING,
    PONG_FRAME,
    PROTO_VERSION,
    READY_FRAME,
    REFUSED,
    REQUEST,
    SHUTDOWN,
    WELCOME,
    EntryKind,
    ErrorInfo,
    Fatal,
    Hello,
    Pull,
    Refused,
    Request,
    Result,
    Welcome,
    message_type,
)

EXIT_OK = 0
EXIT_LINK_FAILED = 2
EXIT_HANDLER_LOAD_FAILED = 3

# Credit the worker keeps with the daemon while its handler is fast (the link's
# window): with a backlog the daemon writes several requests in one send and
# reads several results per wake-up, and the next request is already here when
# one ends. Requests still run one at a time, in order, and each RESULT is
# written before the next request starts (the daemon's retry rule relies on it:
# of the requests it sent and heard nothing of, only the oldest can have run).
PULL_WINDOW = 4
# A handler slower than this keeps a window of one, as before: waiting behind it
# in this instance could cost a request more than waiting in the daemon's queue
# for whichever instance frees first.
BATCH_BELOW_S = 0.005
_PULLS = {n: encode_frame(Pull(n).encode()) for n in range(1, PULL_WINDOW + 1)}

# One read from the link. Python allocates the whole size for each recv() and
# then shrinks it: at 256 KiB (above glibc's 128 KiB mmap threshold) that was an
# mmap and an munmap per request, ~15 µs of a no-op request's worker time; at
# 64 KiB it is a plain heap allocation (~1 µs). Larger frames take more reads.
RECEIVE_BYTES = 64 * 1024

# READY and the first PULL never change: one write of bytes built at import. A
# fork instance then touches no codec on its way to idle (each object it touches
# is a page it copies from its zygote).
READY_PULL = encode_frame(READY_FRAME) + encode_frame(Pull(1).encode())


class PreparedHello:
    """HELLO packed from pieces made once: a fork instance joins bytes, runs no codec.

    Byte for byte what ``encode_frame(Hello(...).encode())`` makes (same keys,
    same order); built in a zygote before it forks.
    """

    def __init__(self) -> None:
        packer = msgpack.Packer(use_bin_type=True)
        self.pack = packer.pack  # kept: each call reuses the packer's buffer
        self.head = packer.pack_map_header(5) + b"".join(
            packer.pack(part) for part in ("t", HELLO, "proto", PROTO_VERSION, "instance_id")
        )
        self.token_key = packer.pack("token")
        self.pid_key = packer.pack("pid")

    def frame(self, instance_id: str, token: str, pid: int) -> bytes:
        pack = self.pack
        body = b"".join(
            (self.head, pack(instance_id), self.token_key, pack(token), self.pid_key, pack(pid))
        )
        return len(body).to_bytes(HEADER_SIZE, "big") + body


__all__ = ["Context", "decode_event", "encode_value", "load_entry", "load_handler", "serve"]


@dataclass
class Context:
    """What a handler learns about the request it serves."""

    request_id: str
    function_name: str
    instance_id: str
    deadline: float  # time.monotonic() value by which the reply is due
    traceparent: str = ""  # W3C trace context of this invocation (pass it on downstream)

    @property
    def trace_id(self) -> str:
        return self.traceparent[3:35]

    def remaining_ms(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


class LinkClosed(Exception):
    pass


class Link:
    """Blocking frame I/O over the Unix socket to the daemon."""

    def __init__(self, sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.sock = sock
        self.decoder = FrameDecoder(max_frame=max_frame)
        # When the last read returned (time.monotonic()): a request waiting in
        # the buffer arrived then or before, and its deadline counts from there.
        self.received_at = 0.0

    def send(self, *messages: dict[str, Any]) -> None:
        # One sendall for several frames: a RESULT and the next PULL travel together.
        self.sock.sendall(
            b"".join(encode_frame(m, max_frame=self.decoder.max_frame) for m in messages)
        )

    def receive(self) -> dict[str, Any]:
        while True:
            msg = self.decoder.next_frame()
            if msg is not None:
                return msg
            chunk = self.sock.recv(RECEIVE_BYTES)
            if not chunk:
                raise LinkClosed("the daemon closed the link")
            self.received_at = time.monotonic()
            self.decoder.receive_data(chunk)


def _exit_when_the_daemon_hangs_up(sock: socket.socket) -> None:
    """Exit at once when the daemon's end of the link closes, even mid-handler.

    The main thread notices a closed link only when it next reads — after the
    handler returns, which may be never. A parent-death signal covers most
    runtimes, but not a detached OCI container (re-parented to init), nor a
    daemon that dropped this instance without killing it. A thread parked in
    ``poll`` for the hang-up costs no CPU and reads nothing off the link.
    """
    # Imported here, not at the top: a fork zygote (which needs no watcher) then
    # never imports threading, whose after-fork hook dirties ~0.3 MB per instance.
    import threading

    hangup = select.POLLRDHUP | select.POLLHUP | select.POLLERR
    fd = sock.fileno()

    def watch() -> None:
        poller = select.poll()
        poller.register(fd, hangup)  # no POLLIN: requests do not wake it
        while True:
            if any(events & hangup for _, events in poller.poll()):
                os._exit(EXIT_OK)  # nobody is left to hear a result

    # A small stack: RLIMIT_AS (memory_mb) counts a thread's stack reservation.
    previous = threading.stack_size(256 * 1024)
    try:
        threading.Thread(target=watch, name="huselet-link-watch", daemon=True).start()
    except RuntimeError as exc:  # no thread to spare (pids limit): serve without it
        print(f"huselet worker: no link watcher: {exc}", file=sys.stderr)
    finally:
        threading.stack_size(previous)


_images: list[Any] = []  # open image readers: the imported modules live in their mappings


def load_handler(
    package_dir: str,
    handler: str,
    *,
    image: str | None = None,
    extract_dir: str | None = None,
) -> Callable[..., Any]:
    """Import ``module:attr``: from the package image when there is one.

    ``image`` (default: env ``HUSELET_IMAGE``) is a store-verified image, so
    opening skips the whole-image hash; native extensions are extracted to
    ``extract_dir`` (default: env ``HUSELET_EXTRACT_DIR``, else ``extract/``
    next to the store's ``images/`` directory). Without an image,
    ``package_dir`` goes on ``sys.path``; with one it does not, so only the
    verified code can be imported. Before the import, modules the worker
    loaded that the function's code also provides are released from
    ``sys.modules`` (:mod:`huselet.worker.names`): the function gets its own.
    """
    module_name, _, attr = handler.partition(":")
    image = image or os.environ.get("HUSELET_IMAGE") or None
    # Layers (env HUSELET_LAYERS, os.pathsep-separated images) come after the
    # function's own code and its requirements, in the configured order.
    layers = [p for p in os.environ.get("HUSELET_LAYERS", "").split(os.pathsep) if p]
    provides: list[names.Provides] = []
    if image is None:
        if package_dir not in sys.path:
            sys.path.insert(0, package_dir)
        provides.append(names.directory_provides(package_dir))
    for path in ([image] if image is not None else []) + layers:
        from cache.importer import install_image_roots  # only image workers pay for it
        from cache.reader import ImageReader

        reader = ImageReader.open(path, verify=False)
        extract_root = (
            extract_dir
            or os.environ.get("HUSELET_EXTRACT_DIR")
            or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), "extract")
        )
        for finder in install_image_roots(reader, extract_root=extract_root):
            provides.append(names.image_provides(finder))
        _images.append(reader)
    names.release_shadowed(provides)
    module = importlib.import_module(module_name)
    fn = getattr(module, attr)
    if not callable(fn):
        raise TypeError(f"{handler} is not callable")
    return cast("Callable[..., Any]", fn)


def entry_kind(raw: str | None = None) -> EntryKind:
    """The function's kind from ``raw`` (default: env ``HUSELET_KIND``; unset: handler)."""
    raw = raw if raw is not None else os.environ.get("HUSELET_KIND", EntryKind.HANDLER.value)
    try:
        return EntryKind(raw)
    except ValueError:
        known = ", ".join(k.value for k in EntryKind)
        raise ValueError(f"HUSELET_KIND={raw!r} is not a function kind ({known})") from None


def load_entry(package_dir: str, spec: str, kind: EntryKind | None = None) -> Entry:
    """Import the function's handler or app and wrap it for its kind."""
    kind = entry_kind() if kind is None else kind
    preload(kind)  # the worker's own imports first: then the function may shadow any name
    return make_entry(load_handler(package_dir, spec), kind)


def serve_request(
    entry: Entry, req: Request, function: str, instance_id: str, received_at: float | None = None
) -> Result:
    """Run ``req`` (received at ``received_at``, default now) and return its RESULT.

    A request whose deadline passed while it waited behind others in this
    instance is not run: the daemon answered its caller already (504).
    """
    now = time.monotonic()
    deadline = (now if received_at is None else received_at) + req.timeout_ms / 1000
    if now >= deadline:
        error = ErrorInfo(ERROR_DEADLINE, "the request's deadline passed before it started")
        return Result(req.id, ok=False, error=error)
    ctx = Context(
        request_id=req.id,
        function_name=function,
        instance_id=instance_id,
        deadline=deadline,
        traceparent=req.trace,
    )
    try:
        with output.request(req.id):
            return entry.serve(req, ctx)
    except Exception as exc:  # a worker bug must cost a 502, not the instance
        output.report_exception(req.id)
        error = ErrorInfo("WorkerError", f"{type(exc).__name__}: {exc}")
        return Result(req.id, ok=False, error=error)


def run(
    link: Link,
    hello: Hello,
    package_dir: str,
    handler_spec: str,
    handler: Entry | None = None,
    *,
    watch_hangup: bool = True,
    streams_installed: bool = False,
) -> int:
    """Say ``hello`` on the link, load the entry, then serve until the link closes.

    ``streams_installed``: the output tagging streams are in place already (a
    fork zygote installs them before it clones).
    """
    link.sock.sendall(encode_frame(hello.encode()))
    welcome = welcome_of(link.receive())
    if welcome is None:
        return EXIT_LINK_FAILED
    link.decoder.max_frame = welcome.max_frame
    try:
        if handler is None:  # a zygote passes the entry it loaded before forking
            handler = load_entry(package_dir, handler_spec)
        handler.start(welcome.function)
    except BaseException as exc:
        return fatal(link, handler_spec, exc)
    if not streams_installed:
        output.install()
    link.sock.sendall(READY_PULL)
    if watch_hangup:  # a fork instance goes without (see huselet.sandbox.zygote)
        _exit_when_the_daemon_hangs_up(link.sock)
    try:
        return _serve_loop(link, handler, welcome.function, hello.instance_id)
    finally:
        handler.stop()


def welcome_of(first: dict[str, Any]) -> Welcome | None:
    """The daemon's answer to HELLO: its WELCOME, or None if it refused (said on stderr)."""
    kind = message_type(first)
    if kind == REFUSED:
        refused = Refused.decode(first)
        print(
            f"huselet worker: refused by daemon: {refused.code}: {refused.message}", file=sys.stderr
        )
        return None
    if kind != WELCOME:
        raise ProtocolError(f"expected welcome, got {kind!r}")
    return Welcome.decode(first)


def fatal(link: Link, handler_spec: str, exc: BaseException) -> int:
    """Tell the daemon the entry failed to load or start (FATAL); the exit code."""
    output.report_exception(None)
    error = ErrorInfo(type(exc).__name__, f"handler {handler_spec} failed to load: {exc}")
    link.send(Fatal(error).encode())
    return EXIT_HANDLER_LOAD_FAILED


def serve_ready(link: Link, handler: Entry, function: str, instance_id: str) -> int:
    """After READY and the first PULL: serve until the link closes, then stop the entry.

    For a caller that did the handshake itself (a fork instance,
    :mod:`huselet.sandbox.instance`); link failures are reported, not raised,
    and the link is closed on the way out, as :func:`serve` does.
    """
    try:
        try:
            return _serve_loop(link, handler, function, instance_id)
        finally:
            handler.stop()
    except (OSError, ProtocolError, LinkClosed) as exc:
        return link_failed(exc)
    finally:
        link.sock.close()


def link_failed(exc: BaseException) -> int:
    print(f"huselet worker: link to daemon failed: {exc}", file=sys.stderr)
    return EXIT_LINK_FAILED


def _serve_loop(link: Link, handler: Entry, function: str, instance_id: str) -> int:
    credit = 1  # requests the daemon may still send: the PULL that went with READY
    window = 1  # the credit to keep: PULL_WINDOW while the handler is fast
    # RESULTs packed without a packer built per frame; made here, after the fork
    # (a packer's buffer written in the zygote would be a page copied per instance).
    encoder = FrameEncoder()
    max_frame = link.decoder.max_frame
    while True:
        try:
            msg = link.receive()
        except LinkClosed:
            return EXIT_OK
        kind = message_type(msg)
        if kind == REQUEST:
            credit -= 1
            req = Request.decode(msg)
            started = time.monotonic()
            result = serve_request(handler, req, function, instance_id, link.received_at)
            window = PULL_WINDOW if time.monotonic() - started < BATCH_BELOW_S else 1
            # Credit is topped up in batches (half a window at least): fewer PULLs,
            # and the daemon writes what they ask for in one send.
            pull = b""
            if credit * 2 <= window:
                pull = _PULLS[window - max(credit, 0)]
                credit = window
            try:
                frame = encoder.encode(
                    result.encode(), max_frame=max_frame, payload_len=len(result.body)
                )
            except ProtocolError as exc:  # the result is larger than a frame may be
                error = ErrorInfo("ResultTooLarge", str(exc))
                frame = encode_frame(Result(result.id, ok=False, error=error).encode())
            # One write: the RESULT (and any PULL) is on the link before the next
            # request starts, so a death leaves the daemon nothing ambiguous.
            link.sock.sendall(frame + pull)
        elif kind == PING:
            link.send(PONG_FRAME)  # the daemon's heartbeat: an idle worker proves it is alive
        elif kind == SHUTDOWN:
            return EXIT_OK
        # Unknown message types are ignored: newer daemons may send more.


def serve(
    link: str | socket.socket,
    instance_id: str,
    token: str,
    package_dir: str,
    handler_spec: str,
    handler: Entry | None = None,
    watch_hangup: bool = True,
    streams_installed: bool = False,
) -> int:
    """Connect to ``link`` (a path, or a socket the runtime already connected),
    then serve until the link closes. Returns the process exit code; link and
    protocol failures are reported on stderr, not raised."""
    if isinstance(link, socket.socket):
        sock = link
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if isinstance(link, socket.socket):
            sock.setblocking(True)  # a socket dialled by the daemon arrives non-blocking
        else:
            sock.connect(link)
        hello = Hello(PROTO_VERSION, instance_id, token, os.getpid())
        return run(
            Link(sock),
            hello,
            package_dir,
            handler_spec,
            handler,
            watch_hangup=watch_hangup,
            streams_installed=streams_installed,
        )
    except (OSError, ProtocolError, LinkClosed) as exc:
        return link_failed(exc)
    finally:
        sock.close()


def main() -> int:
    if os.getpid() == 1:
        # PID 1 of a namespace (an oci container's worker) ignores signals it has
        # no handler for, even from outside: without this, terminate() would be
        # a no-op and every graceful stop would wait out its grace for a kill.
        signal.signal(signal.SIGTERM, lambda *_: os._exit(128 + signal.SIGTERM))
    env = os.environ
    try:
        link: str | socket.socket
        if "HUSELET_LINK_FD" in env:
            link = socket.socket(fileno=int(env.pop("HUSELET_LINK_FD")))
        else:
            link = env["HUSELET_LINK"]
        instance_id = env["HUSELET_INSTANCE_ID"]
        token = env.pop("HUSELET_TOKEN")
        package_dir = env["HUSELET_PACKAGE"]
        handler_spec = env["HUSELET_HANDLER"]
    except KeyError as exc:
        print(f"huselet worker: missing environment variable {exc}", file=sys.stderr)
        return EXIT_LINK_FAILED
    except (ValueError, OSError) as exc:
        print(f"huselet worker: HUSELET_LINK_FD is not a usable socket: {exc}", file=sys.stderr)
        return EXIT_LINK_FAILED
    return serve(link, instance_id, token, package_dir, handler_spec)
