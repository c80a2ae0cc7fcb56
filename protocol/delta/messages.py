"""Wire messages of the delta-event protocol: tags, limits, encoding and validation.

Every frame is one :mod:`protocol.frames` frame (4-byte big-endian length +
msgpack map) whose ``t`` key names its type. Decoding validates every field a
machine relies on and raises :class:`InvalidMessage` otherwise; keys we do not
know are ignored so newer peers can add optional fields. PROTOCOL.md is the
normative description; this module is its executable form.

Hot path: delta items and results are msgpack-encoded *once*, when queued, and
batch/snapshot frames are assembled by concatenating those encodings behind a
hand-written map header. That keeps batching exact in bytes, makes replay a
plain resend of stored bytes, and avoids building a dict per delta.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from protocol.delta.errors import DeltaUsageError, InvalidMessage, ResourceTooLarge
from protocol.errors import FrameTooLarge
from protocol.frames import encode_frame

PROTO_VERSION: Final = 1

# Feature bits. `features` says what a peer implements; `requires` says what the
# peer must implement for the sender to go on (unknown required bits → refuse).
FEATURE_DIGEST: Final = 1 << 0  # digest/count on batch, snapshot-end and heartbeat frames
SUPPORTED_FEATURES: Final = FEATURE_DIGEST

# Message tags.
HELLO: Final = "hello"
WELCOME: Final = "welcome"
BATCH: Final = "batch"
SNAP: Final = "snap"
CMD: Final = "cmd"
HB: Final = "hb"
RESYNC: Final = "resync"
BYE: Final = "bye"

MODE_RESUME: Final = "resume"
MODE_SNAPSHOT: Final = "snapshot"
CMD_RESUME: Final = "resume"
CMD_RESET: Final = "reset"

COMMAND_KINDS: Final = frozenset(
    {
        "deploy_function",
        "update_function",
        "remove_function",
        "prefetch_images",
        "set_quota",
        "drain",
        "undrain",
    }
)

STATUS_OK: Final = "ok"
STATUS_ERROR: Final = "error"
STATUS_REFUSED: Final = "refused"  # fenced: command epoch below the highest seen
STATUS_UNSUPPORTED: Final = "unsupported"  # command kind unknown to this node
RESULT_STATUSES: Final = frozenset({STATUS_OK, STATUS_ERROR, STATUS_REFUSED, STATUS_UNSUPPORTED})

# Limits (bytes are UTF-8 lengths for strings; counts for lists).
MAX_ID_LEN: Final = 128  # node_id, boot_id, scheduler_id, cmd_id, cmd_stream
MAX_KIND_LEN: Final = 64
MAX_NAME_LEN: Final = 1024
MAX_ITEM_BYTES: Final = 128 * 1024  # one encoded delta item, result item or command body
MAX_REASON_LEN: Final = 1024
MIN_MAX_FRAME: Final = 1 << 20  # no peer may announce a smaller frame limit
DEFAULT_MAX_FRAME: Final = 4 << 20
FRAME_OVERHEAD: Final = 1024  # room for a frame's header fields beyond its items
MAX_SEQ: Final = (1 << 63) - 1
DIGEST_SIZE: Final = 16

_LEN = struct.Struct(">I")  # must match protocol.frames
_pack = msgpack.Packer(use_bin_type=True, autoreset=True)


# --- field validation -------------------------------------------------------


def _get(msg: dict[str, Any], key: str) -> Any:
    try:
        return msg[key]
    except KeyError:
        raise InvalidMessage(f"{msg.get('t', '?')} frame lacks required field {key!r}") from None


def _bad(msg: dict[str, Any], key: str, why: str) -> InvalidMessage:
    return InvalidMessage(f"{msg.get('t', '?')} frame field {key!r} {why}")


def req_int(msg: dict[str, Any], key: str, lo: int = 0, hi: int = MAX_SEQ) -> int:
    value = _get(msg, key)
    # bool is an int subclass; True as a sequence number is a peer bug.
    if type(value) is not int:
        raise _bad(msg, key, f"must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise _bad(msg, key, f"is {value}, allowed {lo}..{hi}")
    return value


def req_num(msg: dict[str, Any], key: str, lo: float, hi: float) -> float:
    value = _get(msg, key)
    if type(value) not in (int, float):
        raise _bad(msg, key, f"must be a number, got {type(value).__name__}")
    if not lo <= value <= hi:  # also refuses NaN
        raise _bad(msg, key, f"is {value}, allowed {lo}..{hi}")
    return float(value)


def req_str(msg: dict[str, Any], key: str, max_len: int, *, empty_ok: bool = False) -> str:
    value = _get(msg, key)
    if type(value) is not str:
        raise _bad(msg, key, f"must be a string, got {type(value).__name__}")
    if not (empty_ok or value) or len(value) > max_len:
        raise _bad(msg, key, f"has length {len(value)}, allowed {0 if empty_ok else 1}..{max_len}")
    return value


def req_bool(msg: dict[str, Any], key: str) -> bool:
    value = _get(msg, key)
    if type(value) is not bool:
        raise _bad(msg, key, f"must be a boolean, got {type(value).__name__}")
    return value


def opt_list(msg: dict[str, Any], key: str) -> list[Any]:
    value = msg.get(key)
    if value is None:
        return []
    if type(value) is not list:
        raise _bad(msg, key, f"must be an array, got {type(value).__name__}")
    return value


def opt_digest(msg: dict[str, Any]) -> tuple[bytes, int] | None:
    """The optional ``digest``+``count`` pair (feature DIGEST)."""
    if "digest" not in msg:
        return None
    digest = msg["digest"]
    if type(digest) is not bytes or len(digest) != DIGEST_SIZE:
        raise _bad(msg, "digest", f"must be {DIGEST_SIZE} bytes")
    return digest, req_int(msg, "count")


def check_name(kind: Any, name: Any) -> None:
    """Validate a resource key; shared by the node API and the scheduler's decoder."""
    if type(kind) is not str or not 0 < len(kind) <= MAX_KIND_LEN:
        raise InvalidMessage(f"resource kind must be a string of 1..{MAX_KIND_LEN} characters")
    if type(name) is not str or not 0 < len(name) <= MAX_NAME_LEN:
        raise InvalidMessage(f"resource name must be a string of 1..{MAX_NAME_LEN} characters")


def check_delta(item: Any) -> tuple[str, str, int, Any, bool]:
    """Validate one delta item: ``[kind, name, version, body]`` (upsert) or
    ``[kind, name, version]`` (removal). Returns ``(kind, name, version, body, upsert)``."""
    if type(item) is not list or not 3 <= len(item) <= 4:
        raise InvalidMessage("delta item must be an array of 3 (removal) or 4 (upsert) elements")
    kind, name, version = item[0], item[1], item[2]
    check_name(kind, name)
    if type(version) is not int or not 0 < version <= MAX_SEQ:
        raise InvalidMessage(f"delta {kind}/{name}: version must be an integer 1..2^63-1")
    if len(item) == 4:
        return kind, name, version, item[3], True
    return kind, name, version, None, False


def check_result(item: Any) -> tuple[str, str, Any]:
    """Validate one command result item ``[cmd_id, status, payload]``."""
    if type(item) is not list or len(item) != 3:
        raise InvalidMessage("result item must be an array [cmd_id, status, payload]")
    cmd_id, status = item[0], item[1]
    if type(cmd_id) is not str or not 0 < len(cmd_id) <= MAX_ID_LEN:
        raise InvalidMessage("result cmd_id must be a non-empty string")
    if status not in RESULT_STATUSES:
        raise InvalidMessage(f"result status {status!r} is not one of {sorted(RESULT_STATUSES)}")
    return cmd_id, status, item[2]


# --- decoded messages ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """node → scheduler, first frame of every connection."""

    proto: int
    node_id: str
    boot_id: str
    features: int
    requires: int
    next_seq: int  # seq the node's next node→scheduler frame will carry
    oldest_seq: int  # oldest seq still in the node's replay buffer (== next_seq if empty)
    cmd_stream: str  # scheduler→node stream the node last followed ("" = none)
    cmd_acked: int  # highest contiguous seq of cmd_stream the node applied
    epoch: int  # highest scheduler epoch the node has seen
    max_inflight: int  # node's command window
    max_frame: int
    state: tuple[bytes, int] | None  # (digest, count) of the node's reported state


@dataclass(frozen=True, slots=True)
class Welcome:
    """scheduler → node, answer to HELLO; the connection is established after it."""

    proto: int
    scheduler_id: str
    epoch: int
    features: int
    requires: int
    heartbeat_interval: float
    lease_ttl: float
    mode: str  # MODE_RESUME | MODE_SNAPSHOT (node→scheduler stream)
    resume_from: int
    cmd_stream: str
    cmd_mode: str  # CMD_RESUME | CMD_RESET (scheduler→node stream)
    cmd_from: int
    max_frame: int


@dataclass(frozen=True, slots=True)
class Batch:
    """node → scheduler, sequenced: deltas and command results."""

    seq: int
    ack: int
    deltas: list[Any]  # raw items; validated by check_delta while applying
    results: list[Any]  # raw items; validated by check_result
    state: tuple[bytes, int] | None


@dataclass(frozen=True, slots=True)
class Snap:
    """node → scheduler, sequenced: one part of a full snapshot."""

    seq: int
    ack: int
    rev: int
    part: int
    last: bool
    items: list[Any]
    count: int | None  # on the last part
    state: tuple[bytes, int] | None  # on the last part, with feature DIGEST


@dataclass(frozen=True, slots=True)
class Command:
    """scheduler → node, sequenced."""

    seq: int
    ack: int
    epoch: int
    cmd_id: str
    kind: str
    body: Any


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Both ways, unsequenced: progress marks (last seq sent, ack) and liveness."""

    seq: int
    ack: int
    state: tuple[bytes, int] | None


@dataclass(frozen=True, slots=True)
class Resync:
    """scheduler → node, unsequenced: RESYNC_REQUIRED, send a full snapshot now."""

    reason: str


@dataclass(frozen=True, slots=True)
class Bye:
    """Both ways: the sender is closing the connection and says why."""

    code: str
    message: str
    leader: str | None = None  # not_leader: the address of the scheduler that leads


Message = Hello | Welcome | Batch | Snap | Command | Heartbeat | Resync | Bye


def _decode_hello(m: dict[str, Any]) -> Hello:
    next_seq = req_int(m, "next_seq", 1)
    return Hello(
        proto=req_int(m, "proto", 0, 1 << 16),
        node_id=req_str(m, "node_id", MAX_ID_LEN),
        boot_id=req_str(m, "boot_id", MAX_ID_LEN),
        features=req_int(m, "features", 0, MAX_SEQ),
        requires=req_int(m, "requires", 0, MAX_SEQ),
        next_seq=next_seq,
        oldest_seq=req_int(m, "oldest_seq", 1, next_seq),
        cmd_stream=req_str(m, "cmd_stream", MAX_ID_LEN, empty_ok=True),
        cmd_acked=req_int(m, "cmd_acked"),
        epoch=req_int(m, "epoch"),
        max_inflight=req_int(m, "max_inflight", 1, 1 << 20),
        max_frame=req_int(m, "max_frame", MIN_MAX_FRAME, 1 << 31),
        state=opt_digest(m),
    )


def _decode_welcome(m: dict[str, Any]) -> Welcome:
    mode = req_str(m, "mode", 16)
    cmd_mode = req_str(m, "cmd_mode", 16)
    if mode not in (MODE_RESUME, MODE_SNAPSHOT):
        raise _bad(m, "mode", f"is {mode!r}, expected resume|snapshot")
    if cmd_mode not in (CMD_RESUME, CMD_RESET):
        raise _bad(m, "cmd_mode", f"is {cmd_mode!r}, expected resume|reset")
    heartbeat = req_num(m, "heartbeat_interval", 0.01, 300.0)
    lease_ttl = req_num(m, "lease_ttl", 0.01, 3600.0)
    if lease_ttl <= heartbeat:
        raise _bad(m, "lease_ttl", "must exceed heartbeat_interval")
    return Welcome(
        proto=req_int(m, "proto", 0, 1 << 16),
        scheduler_id=req_str(m, "scheduler_id", MAX_ID_LEN),
        epoch=req_int(m, "epoch", 1),
        features=req_int(m, "features", 0, MAX_SEQ),
        requires=req_int(m, "requires", 0, MAX_SEQ),
        heartbeat_interval=heartbeat,
        lease_ttl=lease_ttl,
        mode=mode,
        resume_from=req_int(m, "resume_from", 1),
        cmd_stream=req_str(m, "cmd_stream", MAX_ID_LEN),
        cmd_mode=cmd_mode,
        cmd_from=req_int(m, "cmd_from", 1),
        max_frame=req_int(m, "max_frame", MIN_MAX_FRAME, 1 << 31),
    )


def _decode_batch(m: dict[str, Any]) -> Batch:
    return Batch(
        seq=req_int(m, "seq", 1),
        ack=req_int(m, "ack"),
        deltas=opt_list(m, "deltas"),
        results=opt_list(m, "results"),
        state=opt_digest(m),
    )


def _decode_snap(m: dict[str, Any]) -> Snap:
    last = req_bool(m, "last")
    return Snap(
        seq=req_int(m, "seq", 1),
        ack=req_int(m, "ack"),
        rev=req_int(m, "rev"),
        part=req_int(m, "part", 0, 1 << 31),
        last=last,
        items=opt_list(m, "items"),
        count=req_int(m, "count") if last else None,
        state=opt_digest(m) if last else None,
    )


def _decode_cmd(m: dict[str, Any]) -> Command:
    return Command(
        seq=req_int(m, "seq", 1),
        ack=req_int(m, "ack"),
        epoch=req_int(m, "epoch", 1),
        cmd_id=req_str(m, "cmd_id", MAX_ID_LEN),
        kind=req_str(m, "kind", MAX_KIND_LEN),
        body=m.get("body", {}),
    )


def _decode_hb(m: dict[str, Any]) -> Heartbeat:
    return Heartbeat(seq=req_int(m, "seq"), ack=req_int(m, "ack"), state=opt_digest(m))


def _decode_resync(m: dict[str, Any]) -> Resync:
    return Resync(reason=req_str(m, "reason", MAX_REASON_LEN, empty_ok=True))


def _decode_bye(m: dict[str, Any]) -> Bye:
    leader = m.get("leader")
    return Bye(
        code=req_str(m, "code", MAX_KIND_LEN),
        message=req_str(m, "message", MAX_REASON_LEN, empty_ok=True),
        # Optional and advisory (a standby's hint): a malformed one is ignored.
        leader=leader if isinstance(leader, str) and 0 < len(leader) <= 256 else None,
    )


_DECODERS: dict[str, Callable[[dict[str, Any]], Message]] = {
    HELLO: _decode_hello,
    WELCOME: _decode_welcome,
    BATCH: _decode_batch,
    SNAP: _decode_snap,
    CMD: _decode_cmd,
    HB: _decode_hb,
    RESYNC: _decode_resync,
    BYE: _decode_bye,
}


def decode_message(msg: dict[str, Any]) -> Message:
    """Validate one decoded frame and return its typed message."""
    tag = msg.get("t")
    decoder = _DECODERS.get(tag) if type(tag) is str else None
    if decoder is None:
        raise InvalidMessage(f"unknown or missing message type {tag!r}")
    return decoder(msg)


# --- encoding -------------------------------------------------------------------


def encode_control(fields: dict[str, Any], max_frame: int) -> bytes:
    """Encode a small, unsequenced or rare frame (hello, welcome, cmd, hb, resync, bye)."""
    return encode_frame(fields, max_frame=max_frame)


def encode_hello(h: Hello, max_frame: int) -> bytes:
    fields: dict[str, Any] = {
        "t": HELLO,
        "proto": h.proto,
        "node_id": h.node_id,
        "boot_id": h.boot_id,
        "features": h.features,
        "requires": h.requires,
        "next_seq": h.next_seq,
        "oldest_seq": h.oldest_seq,
        "cmd_stream": h.cmd_stream,
        "cmd_acked": h.cmd_acked,
        "epoch": h.epoch,
        "max_inflight": h.max_inflight,
        "max_frame": h.max_frame,
    }
    if h.state is not None:
        fields["digest"], fields["count"] = h.state
    return encode_frame(fields, max_frame=max_frame)


def encode_welcome(w: Welcome, max_frame: int) -> bytes:
    fields: dict[str, Any] = {
        "t": WELCOME,
        "proto": w.proto,
        "scheduler_id": w.scheduler_id,
        "epoch": w.epoch,
        "features": w.features,
        "requires": w.requires,
        "heartbeat_interval": w.heartbeat_interval,
        "lease_ttl": w.lease_ttl,
        "mode": w.mode,
        "resume_from": w.resume_from,
        "cmd_stream": w.cmd_stream,
        "cmd_mode": w.cmd_mode,
        "cmd_from": w.cmd_from,
        "max_frame": w.max_frame,
    }
    return encode_frame(fields, max_frame=max_frame)


def encode_heartbeat(seq: int, ack: int, state: tuple[bytes, int] | None) -> bytes:
    fields: dict[str, Any] = {"t": HB, "seq": seq, "ack": ack}
    if state is not None:
        fields["digest"], fields["count"] = state
    return encode_frame(fields)


def encode_bye(code: str, message: str, leader: str | None = None) -> bytes:
    frame = {"t": BYE, "code": code, "message": message[:MAX_REASON_LEN]}
    if leader is not None:
        frame["leader"] = leader
    return encode_frame(frame)


def encode_resync(reason: str) -> bytes:
    return encode_frame({"t": RESYNC, "reason": reason[:MAX_REASON_LEN]})


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
