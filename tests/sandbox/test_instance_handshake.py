"""A fork instance's own handshake (huselet/sandbox/instance.py), the daemon played by the test.

The instance says HELLO, reads WELCOME, sends READY and the first PULL itself,
from objects its zygote prepared, not through the worker SDK's ``run``. A real
zygote (``python -m huselet.sandbox.zygote``, no isolation: the test is the
daemon, and each instance is born its child, CLONE_PARENT) clones instances
whose link the test holds: HELLO must be what the SDK would send, a WELCOME
split over two reads must still be understood, a refusal must end the
instance with the link-failure exit code and a clear line.
"""

from __future__ import annotations

import array
import fcntl
import json
import socket
import termios

from support import wait_until
from zygote_support import Instance

from huselet.worker import sdk
from protocol.frames import DEFAULT_MAX_FRAME, encode_frame
from protocol.link import (
    PROTO_VERSION,
    PULL,
    READY,
    Hello,
    Refused,
    Request,
    Result,
    Welcome,
    message_type,
)


def unread(sock: socket.socket) -> int:
    """Bytes sent on ``sock`` that its peer has not read yet (SIOCOUTQ)."""
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, count)
    return count[0]


REQUEST = encode_frame(Request("r1", b'"hi"', "json", 10_000).encode())


def assert_echoed(inst: Instance, instance_id: str) -> None:
    """The instance answered REQUEST as the echo handler does."""
    result = Result.decode(inst.receive())
    assert result.ok, result
    seen = {"event": "hi", "instance": instance_id, "function": "echo"}
    assert json.loads(result.body) == seen


def test_an_instance_says_hello_as_the_sdk_would_and_serves_after_a_split_welcome(
    zygote: socket.socket,
) -> None:
    inst = Instance(zygote, "echo-1")
    try:
        hello = inst.receive()
        assert hello == Hello(PROTO_VERSION, "echo-1", "tok", inst.pid).encode()
        welcome = encode_frame(Welcome(PROTO_VERSION, "echo", DEFAULT_MAX_FRAME).encode())
        inst.link.sendall(welcome[:5])  # the header and one byte: the rest comes later
        assert wait_until(lambda: unread(inst.link) == 0)  # the instance read those five
        inst.link.sendall(welcome[5:])
        assert message_type(inst.receive()) == READY
        assert message_type(inst.receive()) == PULL
        inst.link.sendall(REQUEST)
        assert_echoed(inst, "echo-1")
    finally:
        code = inst.exit_code()
    assert code == sdk.EXIT_OK


def test_a_handler_instance_is_ready_before_welcome_and_serves_a_request_sent_with_it(
    zygote: socket.socket,
) -> None:
    # A plain handler's start only records the name: done in the zygote, so READY
    # and the first PULL come with HELLO (the daemon never waits for READY alone).
    inst = Instance(zygote, "echo-3")
    try:
        assert message_type(inst.receive()) == "hello"
        assert message_type(inst.receive()) == READY  # no WELCOME sent yet
        assert message_type(inst.receive()) == PULL
        welcome = encode_frame(Welcome(PROTO_VERSION, "echo", DEFAULT_MAX_FRAME).encode())
        inst.link.sendall(welcome + REQUEST)  # one read in the instance: both frames
        assert_echoed(inst, "echo-3")
    finally:
        code = inst.exit_code()
    assert code == sdk.EXIT_OK


def test_a_refused_instance_exits_with_the_link_failure_code_and_says_why(
    zygote: socket.socket,
) -> None:
    inst = Instance(zygote, "echo-2")
    try:
        assert message_type(inst.receive()) == "hello"
        inst.link.sendall(encode_frame(Refused("bad_token", "no such instance").encode()))
    finally:
        code = inst.exit_code()
    assert code == sdk.EXIT_LINK_FAILED
    assert b"refused by daemon: bad_token: no such instance" in inst.output.read()


def test_prepared_hello_is_byte_for_byte_the_sdks() -> None:
    hello = sdk.PreparedHello()
    for instance_id, token, pid in [("a", "t", 1), ("x" * 40, "y" * 300, 2**31)]:
        expected = encode_frame(Hello(PROTO_VERSION, instance_id, token, pid).encode())
        assert hello.frame(instance_id, token, pid) == expected


def test_a_welcome_that_is_not_msgpack_fails_the_link_typed(zygote: socket.socket) -> None:
    inst = Instance(zygote, "echo-3")
    try:
        assert message_type(inst.receive()) == "hello"
        inst.link.sendall(b"\x00\x00\x00\x01\xc1")  # 0xc1: a byte msgpack never uses
    finally:
        code = inst.exit_code()
    assert code == sdk.EXIT_LINK_FAILED
    assert b"link to daemon failed: frame is not valid msgpack" in inst.output.read()
