"""Worker SDK main loop: connect, authenticate, load the handler, pull and serve.

Configuration comes from environment variables set by the runtime
(``HUSELET_LINK`` — or ``HUSELET_LINK_FD``, an already connected socket the
runtime dialled for a sandbox that cannot see the daemon's socket —
``HUSELET_INSTANCE_ID``, ``HUSELET_TOKEN``, ``HUSELET_FUNCTION``,
``HUSELET_PACKAGE``, ``HUSELET_HANDLER``); the token is removed from the
environment before any function code runs. A zygote calls :func:`serve`
directly with the same parameters and a handler it imported before forking.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from protocol.errors import ProtocolError
from protocol.frames import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame
from protocol.link import (
    ERROR_INVALID_EVENT,
    KIND_BYTES,
    KIND_JSON,
    KIND_TEXT,
    PING,
    PONG_FRAME,
    PROTO_VERSION,
    READY_FRAME,
    REFUSED,
    REQUEST,
    SHUTDOWN,
    WELCOME,
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


@dataclass
class Context:
    """What a handler learns about the request it serves."""

    request_id: str
    function_name: str
    instance_id: str
    deadline: float  # time.monotonic() value by which the reply is due

    def remaining_ms(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


class LinkClosed(Exception):
    pass


class Link:
    """Blocking frame I/O over the Unix socket to the daemon."""

    def __init__(self, sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.sock = sock
        self.decoder = FrameDecoder(max_frame=max_frame)

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
            chunk = self.sock.recv(262144)
            if not chunk:
                raise LinkClosed("the daemon closed the link")
            self.decoder.receive_data(chunk)


def _exit_when_the_daemon_hangs_up(sock: socket.socket) -> None:
    """Exit at once when the daemon's end of the link closes, even mid-handler.

    The main thread notices a closed link only when it next reads — after the
    handler returns, which may be never. A parent-death signal covers most
    runtimes, but not a detached OCI container (re-parented to init), nor a
    daemon that dropped this instance without killing it. A thread parked in
    ``poll`` for the hang-up costs no CPU and reads nothing off the link.
    """
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
) -> Callable[[Any, Context], Any]:
    """Import ``module:function``: from the package image when there is one.

    ``image`` (default: env ``HUSELET_IMAGE``) is a store-verified image, so
    opening skips the whole-image hash; native extensions are extracted to
    ``extract_dir`` (default: env ``HUSELET_EXTRACT_DIR``, else ``extract/``
    next to the store's ``images/`` directory). Without an image,
    ``package_dir`` goes on ``sys.path``; with one it does not, so only the
    verified code can be imported.
    """
    module_name, _, attr = handler.partition(":")
    image = image or os.environ.get("HUSELET_IMAGE") or None
    if image is not None:
        from cache.importer import install_image_importer  # only image workers pay for it
        from cache.reader import ImageReader

        reader = ImageReader.open(image, verify=False)
        extract_dir = (
            extract_dir
            or os.environ.get("HUSELET_EXTRACT_DIR")
            or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(image))), "extract")
        )
        install_image_importer(reader, extract_root=extract_dir)
        _images.append(reader)
    elif package_dir not in sys.path:
        sys.path.insert(0, package_dir)
    module = importlib.import_module(module_name)
    fn = getattr(module, attr)
    if not callable(fn):
        raise TypeError(f"{handler} is not callable")
    return cast("Callable[[Any, Context], Any]", fn)


def decode_event(event: bytes, kind: str) -> Any:
    if kind == KIND_JSON:
        return json.loads(event) if event else None
    return event


def encode_value(value: Any) -> tuple[bytes, str]:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), KIND_BYTES
    if isinstance(value, str):
        return value.encode("utf-8"), KIND_TEXT
    return json.dumps(value, separators=(",", ":")).encode("utf-8"), KIND_JSON


def serve_request(
    handler: Callable[[Any, Context], Any], req: Request, function: str, instance_id: str
) -> Result:
    try:
        event = decode_event(req.event, req.kind)
    except ValueError as exc:
        return Result(
            req.id,
            ok=False,
            error=ErrorInfo(ERROR_INVALID_EVENT, f"event is not valid JSON: {exc}"),
        )
    ctx = Context(
        request_id=req.id,
        function_name=function,
        instance_id=instance_id,
        deadline=time.monotonic() + req.timeout_ms / 1000,
    )
    try:
        value = handler(event, ctx)
    except Exception as exc:
        # The operator gets the traceback in the instance log; the caller only type + message.
        traceback.print_exc()
        return Result(req.id, ok=False, error=ErrorInfo(type(exc).__name__, str(exc)))
    try:
        body, kind = encode_value(value)
    except (TypeError, ValueError) as exc:
        return Result(
            req.id,
            ok=False,
            error=ErrorInfo(
                "InvalidResult", f"handler returned a value that is not JSON-serialisable: {exc}"
            ),
        )
    return Result(req.id, ok=True, body=body, kind=kind)


def run(
    link: Link,
    *,
    instance_id: str,
    token: str,
    package_dir: str,
    handler_spec: str,
    handler: Callable[[Any, Context], Any] | None = None,
) -> int:
    link.send(Hello(PROTO_VERSION, instance_id, token, os.getpid()).encode())
    first = link.receive()
    if message_type(first) == REFUSED:
        refused = Refused.decode(first)
        print(
            f"huselet worker: refused by daemon: {refused.code}: {refused.message}", file=sys.stderr
        )
        return EXIT_LINK_FAILED
    if message_type(first) != WELCOME:
        raise ProtocolError(f"expected welcome, got {message_type(first)!r}")
    welcome = Welcome.decode(first)
    link.decoder.max_frame = welcome.max_frame
    try:
        if handler is None:  # a zygote passes the handler it imported before forking
            handler = load_handler(package_dir, handler_spec)
    except BaseException as exc:
        traceback.print_exc()
        link.send(
            Fatal(
                ErrorInfo(type(exc).__name__, f"handler {handler_spec} failed to load: {exc}")
            ).encode()
        )
        return EXIT_HANDLER_LOAD_FAILED
    link.send(READY_FRAME, Pull(1).encode())
    _exit_when_the_daemon_hangs_up(link.sock)
    pull = Pull(1).encode()
    while True:
        try:
            msg = link.receive()
        except LinkClosed:
            return EXIT_OK
        kind = message_type(msg)
        if kind == REQUEST:
            result = serve_request(handler, Request.decode(msg), welcome.function, instance_id)
            try:
                link.send(result.encode(), pull)
            except ProtocolError as exc:  # the result is larger than a frame may be
                link.send(
                    Result(
                        result.id, ok=False, error=ErrorInfo("ResultTooLarge", str(exc))
                    ).encode(),
                    pull,
                )
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
    handler: Callable[[Any, Context], Any] | None = None,
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
        return run(
            Link(sock),
            instance_id=instance_id,
            token=token,
            package_dir=package_dir,
            handler_spec=handler_spec,
            handler=handler,
        )
    except (OSError, ProtocolError, LinkClosed) as exc:
        print(f"huselet worker: link to daemon failed: {exc}", file=sys.stderr)
        return EXIT_LINK_FAILED
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
