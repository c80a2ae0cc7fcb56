"""Length-prefixed msgpack frames, sans-IO.

Wire format: a 4-byte big-endian unsigned length ``n`` followed by ``n`` bytes
holding one msgpack *map* with string keys. The length is checked against the
receiver's limit before any byte of the body is buffered, so a hostile peer
cannot make us allocate more than ``max_frame`` (plus one read) per connection.

Usage::

    dec = FrameDecoder(max_frame=1 << 20)
    dec.receive_data(chunk)
    for msg in dec.frames():   # raises MalformedFrame / FrameTooLarge
        ...
    sock.send(encode_frame({"t": "pull", "n": 1}))
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import msgpack

from protocol.errors import FrameTooLarge, MalformedFrame

_LEN = struct.Struct(">I")
HEADER_SIZE = _LEN.size
DEFAULT_MAX_FRAME = 8 * 1024 * 1024
# No message of ours nests deeper than a few levels. Deeper input (msgpack's
# own parser allows ~1000) is refused here so that code handling a message
# (logging it, json-encoding it, comparing it) can never hit RecursionError.
MAX_NESTING = 32
# msgpack's packer starts with a 256 KiB buffer. The daemon makes allocations
# of that size mmap-backed (gateway.budget.tune_allocator) unless its heap has
# room at the top, and then every frame costs an mmap, page faults and an
# munmap: ~17 µs instead of under 1 µs (issue 12). A small buffer grows as
# needed (by realloc) for large frames.
PACK_BUFFER = 4096
_CONTAINERS = (dict, list)


def encode_frame(message: dict[str, Any], *, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Serialise one message into a frame; refuse to produce one the peer would refuse."""
    try:
        body: bytes = msgpack.packb(message, use_bin_type=True, buf_size=PACK_BUFFER)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MalformedFrame(f"message cannot be encoded as msgpack: {exc}") from None
    if len(body) > max_frame:
        raise FrameTooLarge(f"frame of {len(body)} bytes exceeds the limit of {max_frame} bytes")
    return _LEN.pack(len(body)) + body


# Payloads above this go through encode_frame: a reused packer would keep a
# buffer as large as the largest frame it ever packed.
SMALL_PAYLOAD = 64 * 1024


class FrameEncoder:
    """:func:`encode_frame` with one reusable msgpack packer, for a hot path's small frames.

    ``msgpack.packb`` builds a packer (and its buffer) per call: for the small
    frames of a request and its reply that is most of the cost (3.4 µs vs
    0.7 µs per reply frame). Packing plain data calls no Python code, so the
    packer is never re-entered; one encoder per connection or per module is
    enough. ``payload_len``: the bytes the caller knows the message carries
    (a body, an event); above :data:`SMALL_PAYLOAD` the frame is packed by
    :func:`encode_frame` instead.
    """

    __slots__ = ("_packer",)

    def __init__(self) -> None:
        self._packer = msgpack.Packer(use_bin_type=True, buf_size=PACK_BUFFER)

    def encode(
        self, message: dict[str, Any], *, max_frame: int = DEFAULT_MAX_FRAME, payload_len: int = 0
    ) -> bytes:
        if payload_len > SMALL_PAYLOAD:
            return encode_frame(message, max_frame=max_frame)
        try:
            body: bytes = self._packer.pack(message)
        except (TypeError, ValueError, OverflowError) as exc:
            raise MalformedFrame(f"message cannot be encoded as msgpack: {exc}") from None
        if len(body) > max_frame:
            raise FrameTooLarge(
                f"frame of {len(body)} bytes exceeds the limit of {max_frame} bytes"
            )
        return _LEN.pack(len(body)) + body


def required_field(msg: dict[str, Any], key: str, typ: type | tuple[type, ...]) -> Any:
    """``msg[key]`` if present and of type ``typ``; MalformedFrame otherwise."""
    try:
        value = msg[key]
    except KeyError:
        raise MalformedFrame(f"{msg.get('t', '?')} frame lacks required field {key!r}") from None
    if type(value) is typ:
        return value  # the common case, exactly the type asked for (True is a bool, not an int)
    # bool is an int subclass; a count or id given as True is a peer bug.
    if not isinstance(value, typ) or (isinstance(value, bool) and typ in (int, (int, float))):
        raise MalformedFrame(
            f"{msg.get('t', '?')} frame field {key!r} has type {type(value).__name__}"
        )
    return value


def optional_field(msg: dict[str, Any], key: str, typ: type) -> Any:
    """Like :func:`required_field`, but an absent (or nil) key is None."""
    return required_field(msg, key, typ) if msg.get(key) is not None else None


class FrameDecoder:
    """Accumulates bytes and yields complete, validated messages.

    After it raises, the decoder is poisoned: the stream's framing can no
    longer be trusted, so the only correct reaction is to close the connection.
    """

    __slots__ = ("_broken", "_buf", "max_frame")

    def __init__(self, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._broken: Exception | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf)

    def receive_data(self, data: bytes | bytearray) -> None:
        if self._broken is not None:
            raise self._broken
        self._buf += data

    def next_frame(self) -> dict[str, Any] | None:
        """Return the next complete message, or None when more bytes are needed."""
        if self._broken is not None:
            raise self._broken
        buf = self._buf
        if len(buf) < HEADER_SIZE:
            return None
        (length,) = _LEN.unpack_from(buf)
        if length > self.max_frame:
            self._broken = FrameTooLarge(
                f"peer announced a frame of {length} bytes; the limit is {self.max_frame}"
            )
            raise self._broken
        end = HEADER_SIZE + length
        if len(buf) < end:
            return None
        body = buf[HEADER_SIZE:end]  # a copy (msgpack reads any buffer): the next del moves buf
        del buf[:end]
        try:
            # strict_map_key: only str/bytes keys. Container sizes cannot exceed
            # the body length, which is already bounded by max_frame.
            message = msgpack.unpackb(body, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types
            self._broken = MalformedFrame(f"frame is not valid msgpack: {exc}")
            raise self._broken from None
        if not isinstance(message, dict):
            self._broken = MalformedFrame(
                f"frame must be a msgpack map, got {type(message).__name__}"
            )
            raise self._broken
        if not _shallow(message):
            self._broken = MalformedFrame(f"frame nests deeper than {MAX_NESTING} levels")
            raise self._broken
        return message

    def frames(self) -> Iterator[dict[str, Any]]:
        """Yield every complete message currently buffered."""
        while (message := self.next_frame()) is not None:
            yield message


def _shallow(message: dict[str, Any]) -> bool:
    """True if no container in ``message`` sits deeper than MAX_NESTING (iterative)."""
    # Most frames are flat (a CALL, a RESULT, a PULL): one pass over the top level,
    # building nothing, finds that.
    for value in message.values():
        if isinstance(value, _CONTAINERS):
            break
    else:
        return True
    stack: list[tuple[Any, int]] = [(v, 2) for v in message.values() if isinstance(v, _CONTAINERS)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_NESTING:
            return False
        children = value.values() if isinstance(value, dict) else value
        for child in children:
            if isinstance(child, _CONTAINERS):
                stack.append((child, depth + 1))
    return True
