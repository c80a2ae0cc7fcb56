"""The zygote's fork loop (huselet/sandbox/forkloop.py), the daemon played by the test.

A request the loop cannot use — not one frame, not msgpack, not an array
of five (a map ``fork``: the old form), a
``seq`` or ``place`` of the wrong type, descriptors missing, a placed request
before its ``home`` — is refused with a typed ``fork_failed`` saying why; its
descriptors are closed; and the zygote goes on serving: the next good request
gets an instance. The ``forked`` reply, packed by one struct from prebuilt
pieces, decodes to exactly the map the daemon expects, for any ``seq``.
"""

from __future__ import annotations

import socket
import struct

import msgpack
import pytest
from zygote_support import Instance

from huselet.sandbox.zygote import receive
from huselet.worker import sdk
from protocol.frames import encode_frame
from protocol.link import Refused, message_type

FORK = {"t": "fork", "id": "echo-x", "token": "tok"}  # the old map form


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def fork(seq: object, place: object = 0) -> bytes:
    """A fork request as the daemon sends it (an array), with any seq and place."""
    return frame(msgpack.packb([seq, "echo-x", "tok", {}, place]))


BAD = [
    pytest.param(b"\x00\x00\x00\x09abc", "malformed control packet", None, id="length-mismatch"),
    pytest.param(b"\x00\x00", "malformed control packet", None, id="short"),
    pytest.param(frame(b"\xc1"), "malformed control packet", None, id="not-msgpack"),
    pytest.param(frame(msgpack.packb("fork")), "malformed control packet", None, id="a-string"),
    pytest.param(frame(msgpack.packb([1, 2])), "2 fields, not 5", 1, id="short-array"),
    pytest.param(frame(msgpack.packb([])), "0 fields, not 5", None, id="empty-array"),
    pytest.param(encode_frame({**FORK, "seq": 4}), "not an array", 4, id="map"),
    pytest.param(fork("1"), "must be integers", None, id="seq-str"),
    pytest.param(fork(-1), "must be integers", -1, id="seq-negative"),
    pytest.param(fork(1.0), "must be integers", None, id="seq-float"),
    pytest.param(fork(7, "2"), "must be integers", 7, id="place"),
    pytest.param(fork(7, 1), "home groups", 7, id="no-home"),
]


@pytest.mark.parametrize(("packet", "why", "seq"), BAD)
def test_a_malformed_request_is_refused_typed_and_the_zygote_serves_the_next(
    zygote: socket.socket, packet: bytes, why: str, seq: int | None
) -> None:
    # Three descriptors: the link and output of a fork, and one more (a
    # "cgroup handle" for place=1). The test keeps one end of each socketpair.
    pairs = [socket.socketpair() for _ in range(3)]
    socket.send_fds(zygote, [packet], [theirs.fileno() for _, theirs in pairs])
    for _, theirs in pairs:
        theirs.close()
    reply, fds = receive(zygote)
    assert fds == []
    assert reply is not None and reply["t"] == "fork_failed", reply
    assert why in reply["error"], reply
    assert reply["seq"] == seq, reply  # an integer seq is echoed, else nil
    for ours, _ in pairs:
        ours.settimeout(10)
        assert ours.recv(1) == b"", "the zygote kept a descriptor of a refused request"
        ours.close()
    inst = Instance(zygote, "echo-after", seq=2**40)  # uint64 seq in the packed reply
    try:
        assert message_type(inst.receive()) == "hello"
        inst.link.sendall(encode_frame(Refused("bad_token", "test over").encode()))
    finally:
        assert inst.exit_code() == sdk.EXIT_LINK_FAILED


def test_a_fork_with_too_few_descriptors_is_refused_with_its_seq(zygote: socket.socket) -> None:
    ours, theirs = socket.socketpair()
    socket.send_fds(zygote, [fork(3)], [theirs.fileno()])
    theirs.close()
    reply, _ = receive(zygote)
    assert reply is not None and reply["t"] == "fork_failed" and reply["seq"] == 3, reply
    assert "1 descriptors for place=0" in reply["error"], reply
    ours.settimeout(10)
    assert ours.recv(1) == b""
    ours.close()


def test_unknown_requests_are_ignored_and_stop_ends_the_zygote(zygote: socket.socket) -> None:
    zygote.send(encode_frame({"t": "from-a-newer-daemon", "seq": 1}))
    inst = Instance(zygote, "echo-1", seq=5)  # the next answer is this fork's
    try:
        assert message_type(inst.receive()) == "hello"
        inst.link.sendall(encode_frame(Refused("bad_token", "test over").encode()))
    finally:
        assert inst.exit_code() == sdk.EXIT_LINK_FAILED
    zygote.send(encode_frame({"t": "stop"}))
    assert receive(zygote) == (None, [])  # it exited: its end closed
