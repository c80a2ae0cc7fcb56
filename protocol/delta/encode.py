"""Put delta-protocol messages on the wire.

Hot path: delta items and results are msgpack-encoded *once*, when queued
(:func:`encode_item`), and batch/snapshot frames are assembled by
concatenating those encodings behind a hand-written map header
(:func:`assemble`). That keeps batching exact in bytes, makes replay a plain
resend of stored bytes, and avoids building a dict per delta. Control frames
(hello, welcome, cmd, hb, resync, bye) are small and go through
:func:`protocol.frames.encode_frame`.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import msgpack

from protocol.delta.errors import DeltaUsageError, ResourceTooLarge
from protocol.delta.messages import (
    MAX_ITEM_BYTES,
    MAX_REASON_LEN,
    Hello,
    Tag,
    Welcome,
)
from protocol.errors import FrameTooLarge
from protocol.frames import encode_frame

_LEN = struct.Struct(">I")  # must match protocol.frames
_pack = msgpack.Packer(use_bin_type=True, autoreset=True)
_pack = msgpack.Packer(use_bin_type=True, autoreset=True)


def encode_control(fields: dict[str, Any], max_frame: int) -> bytes:
    """Encode a small, unsequenced or rare frame (hello, welcome, cmd, hb, resync, bye)."""
    return encode_frame(fields, max_frame=max_frame)


def encode_hello(h: Hello, max_frame: int) -> bytes:
    return encode_frame(_handshake_fields(Tag.HELLO, h), max_frame=max_frame)


def encode_welcome(w: Welcome, max_frame: int) -> bytes:
    return encode_frame(_handshake_fields(Tag.WELCOME, w), max_frame=max_frame)


def _handshake_fields(tag: Tag, message: Hello | Welcome) -> dict[str, Any]:
    """The frame map of a HELLO or WELCOME: ``t``, then every field in declaration order.

    The order is the wire order (PROTOCOL.md's test vectors are byte-exact); the
    optional ``state`` pair goes last as ``digest`` and ``count``.
    """
    fields: dict[str, Any] = {"t": tag}
    for field in dataclasses.fields(message):
        if field.name != "state":
            fields[field.name] = getattr(message, field.name)
    state = getattr(message, "state", None)
    if state is not None:
        fields["digest"], fields["count"] = state
    return fields


def encode_heartbeat(seq: int, ack: int, state: tuple[bytes, int] | None) -> bytes:
    fields: dict[str, Any] = {"t": Tag.HB, "seq": seq, "ack": ack}
    if state is not None:
        fields["digest"], fields["count"] = state
    return encode_frame(fields)


def encode_bye(code: str, message: str, leader: str | None = None) -> bytes:
    frame = {"t": Tag.BYE, "code": code, "message": message[:MAX_REASON_LEN]}
    if leader is not None:
        frame["leader"] = leader
    return encode_frame(frame)


def encode_resync(reason: str) -> bytes:
    return encode_frame({"t": Tag.RESYNC, "reason": reason[:MAX_REASON_LEN]})


def encode_item(packer: msgpack.Packer, obj: Any, what: str) -> bytes:
    """Encode one delta item, result or command body for the wire, refusing (locally,
    with :class:`DeltaUsageError`) anything the peer's decoder would refuse: values
    msgpack cannot encode, non-string map keys, more than ``MAX_ITEM_BYTES``."""
    try:
        data: bytes = packer.pack(obj)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DeltaUsageError(f"{what} is not msgpack-encodable: {exc}") from None
    if len(data) > MAX_ITEM_BYTES:
        raise ResourceTooLarge(f"{what} is {len(data)} bytes encoded; limit {MAX_ITEM_BYTES}")
    try:
        # Receivers decode with strict_map_key; one bad key would poison a whole
        # frame (and its replays), so refuse it here, where the caller can act.
        msgpack.unpackb(data, raw=False, strict_map_key=True)
    except ValueError as exc:
        raise DeltaUsageError(f"{what} would be refused by the peer: {exc}") from None
    return data


def assemble(
    fields: list[tuple[str, Any]], arrays: list[tuple[str, list[bytes]]], max_frame: int
) -> bytes:
    """Build a frame from plain header fields plus arrays of *pre-encoded* items.

    The result is byte-for-byte a valid msgpack map; items are concatenated,
    never decoded or re-encoded.
    """
    parts = [_pack.pack_map_header(len(fields) + len(arrays))]
    for key, value in fields:
        parts.append(_pack.pack(key))
        parts.append(_pack.pack(value))
    for key, items in arrays:
        parts.append(_pack.pack(key))
        parts.append(_pack.pack_array_header(len(items)))
        parts.extend(items)
    body = b"".join(parts)
    if len(body) > max_frame:
        # The batcher budgets below max_frame; reaching this is a local bug.
        raise FrameTooLarge(f"assembled frame of {len(body)} bytes exceeds {max_frame}")
    return _LEN.pack(len(body)) + body
