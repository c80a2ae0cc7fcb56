"""Validate a received delta-protocol frame and turn it into its typed message.

Decoding checks every field a machine relies on (type, range, length) and
raises :class:`~protocol.delta.errors.InvalidMessage` naming the frame and
field otherwise; keys we do not know are ignored so newer peers can add
optional fields. Delta and result items are validated one by one while they
are applied (:func:`check_delta`, :func:`check_result`), so a batch is never
copied into per-item objects first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from protocol.delta import messages as wire
from protocol.delta.errors import InvalidMessage

# --- field validation -------------------------------------------------------


def _get(msg: dict[str, Any], key: str) -> Any:
    try:
        return msg[key]
    except KeyError:
        raise InvalidMessage(f"{msg.get('t', '?')} frame lacks required field {key!r}") from None


def _bad(msg: dict[str, Any], key: str, why: str) -> InvalidMessage:
    return InvalidMessage(f"{msg.get('t', '?')} frame field {key!r} {why}")


def req_int(msg: dict[str, Any], key: str, lo: int = 0, hi: int = wire.MAX_SEQ) -> int:
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
    if type(digest) is not bytes or len(digest) != wire.DIGEST_SIZE:
        raise _bad(msg, "digest", f"must be {wire.DIGEST_SIZE} bytes")
    return digest, req_int(msg, "count")


def check_name(kind: Any, name: Any) -> None:
    """Validate a resource key; shared by the node API and the scheduler's decoder."""
    if type(kind) is not str or not 0 < len(kind) <= wire.MAX_KIND_LEN:
        raise InvalidMessage(f"resource kind must be a string of 1..{wire.MAX_KIND_LEN} characters")
    if type(name) is not str or not 0 < len(name) <= wire.MAX_NAME_LEN:
        raise InvalidMessage(f"resource name must be a string of 1..{wire.MAX_NAME_LEN} characters")


def check_delta(item: Any) -> tuple[str, str, int, Any, bool]:
    """Validate one delta item: ``[kind, name, version, body]`` (upsert) or
    ``[kind, name, version]`` (removal). Returns ``(kind, name, version, body, upsert)``."""
    if type(item) is not list or not 3 <= len(item) <= 4:
        raise InvalidMessage("delta item must be an array of 3 (removal) or 4 (upsert) elements")
    kind, name, version = item[0], item[1], item[2]
    check_name(kind, name)
    if type(version) is not int or not 0 < version <= wire.MAX_SEQ:
        raise InvalidMessage(f"delta {kind}/{name}: version must be an integer 1..2^63-1")
    if len(item) == 4:
        return kind, name, version, item[3], True
    return kind, name, version, None, False


def check_result(item: Any) -> tuple[str, str, Any]:
    """Validate one command result item ``[cmd_id, status, payload]``."""
    if type(item) is not list or len(item) != 3:
        raise InvalidMessage("result item must be an array [cmd_id, status, payload]")
    cmd_id, status = item[0], item[1]
    if type(cmd_id) is not str or not 0 < len(cmd_id) <= wire.MAX_ID_LEN:
        raise InvalidMessage("result cmd_id must be a non-empty string")
    if status not in wire.RESULT_STATUSES:
        raise InvalidMessage(
            f"result status {status!r} is not one of {sorted(wire.RESULT_STATUSES)}"
        )
    return cmd_id, status, item[2]


# --- messages ---


def _decode_hello(m: dict[str, Any]) -> wire.Hello:
    next_seq = req_int(m, "next_seq", 1)
    return wire.Hello(
        proto=req_int(m, "proto", 0, 1 << 16),
        node_id=req_str(m, "node_id", wire.MAX_ID_LEN),
        boot_id=req_str(m, "boot_id", wire.MAX_ID_LEN),
        features=req_int(m, "features", 0, wire.MAX_SEQ),
        requires=req_int(m, "requires", 0, wire.MAX_SEQ),
        next_seq=next_seq,
        oldest_seq=req_int(m, "oldest_seq", 1, next_seq),
        cmd_stream=req_str(m, "cmd_stream", wire.MAX_ID_LEN, empty_ok=True),
        cmd_acked=req_int(m, "cmd_acked"),
        epoch=req_int(m, "epoch"),
        max_inflight=req_int(m, "max_inflight", 1, 1 << 20),
        max_frame=req_int(m, "max_frame", wire.MIN_MAX_FRAME, 1 << 31),
        state=opt_digest(m),
    )


def _decode_welcome(m: dict[str, Any]) -> wire.Welcome:
    mode = req_str(m, "mode", 16)
    cmd_mode = req_str(m, "cmd_mode", 16)
    if mode not in (wire.MODE_RESUME, wire.MODE_SNAPSHOT):
        raise _bad(m, "mode", f"is {mode!r}, expected resume|snapshot")
    if cmd_mode not in (wire.CMD_RESUME, wire.CMD_RESET):
        raise _bad(m, "cmd_mode", f"is {cmd_mode!r}, expected resume|reset")
    heartbeat = req_num(m, "heartbeat_interval", 0.01, 300.0)
    lease_ttl = req_num(m, "lease_ttl", 0.01, 3600.0)
    if lease_ttl <= heartbeat:
        raise _bad(m, "lease_ttl", "must exceed heartbeat_interval")
    return wire.Welcome(
        proto=req_int(m, "proto", 0, 1 << 16),
        scheduler_id=req_str(m, "scheduler_id", wire.MAX_ID_LEN),
        epoch=req_int(m, "epoch", 1),
        features=req_int(m, "features", 0, wire.MAX_SEQ),
        requires=req_int(m, "requires", 0, wire.MAX_SEQ),
        heartbeat_interval=heartbeat,
        lease_ttl=lease_ttl,
        mode=mode,
        resume_from=req_int(m, "resume_from", 1),
        cmd_stream=req_str(m, "cmd_stream", wire.MAX_ID_LEN),
        cmd_mode=cmd_mode,
        cmd_from=req_int(m, "cmd_from", 1),
        max_frame=req_int(m, "max_frame", wire.MIN_MAX_FRAME, 1 << 31),
    )


def _decode_batch(m: dict[str, Any]) -> wire.Batch:
    return wire.Batch(
        seq=req_int(m, "seq", 1),
        ack=req_int(m, "ack"),
        deltas=opt_list(m, "deltas"),
        results=opt_list(m, "results"),
        state=opt_digest(m),
    )


def _decode_snap(m: dict[str, Any]) -> wire.Snap:
    last = req_bool(m, "last")
    return wire.Snap(
        seq=req_int(m, "seq", 1),
        ack=req_int(m, "ack"),
        rev=req_int(m, "rev"),
        part=req_int(m, "part", 0, 1 << 31),
        last=last,
        items=opt_list(m, "items"),
        count=req_int(m, "count") if last else None,
        state=opt_digest(m) if last else None,
    )


def _decode_cmd(m: dict[str, Any]) -> wire.Command:
    return wire.Command(
        seq=req_int(m, "seq", 1),
        ack=req_int(m, "ack"),
        epoch=req_int(m, "epoch", 1),
        cmd_id=req_str(m, "cmd_id", wire.MAX_ID_LEN),
        kind=req_str(m, "kind", wire.MAX_KIND_LEN),
        body=m.get("body", {}),
    )


def _decode_hb(m: dict[str, Any]) -> wire.Heartbeat:
    return wire.Heartbeat(seq=req_int(m, "seq"), ack=req_int(m, "ack"), state=opt_digest(m))


def _decode_resync(m: dict[str, Any]) -> wire.Resync:
    return wire.Resync(reason=req_str(m, "reason", wire.MAX_REASON_LEN, empty_ok=True))


def _decode_bye(m: dict[str, Any]) -> wire.Bye:
    leader = m.get("leader")
    return wire.Bye(
        code=req_str(m, "code", wire.MAX_KIND_LEN),
        message=req_str(m, "message", wire.MAX_REASON_LEN, empty_ok=True),
        # Optional and advisory (a standby's hint): a malformed one is ignored.
        leader=leader if isinstance(leader, str) and 0 < len(leader) <= 256 else None,
    )


_DECODERS: dict[str, Callable[[dict[str, Any]], wire.Message]] = {
    wire.Tag.HELLO: _decode_hello,
    wire.Tag.WELCOME: _decode_welcome,
    wire.Tag.BATCH: _decode_batch,
    wire.Tag.SNAP: _decode_snap,
    wire.Tag.CMD: _decode_cmd,
    wire.Tag.HB: _decode_hb,
    wire.Tag.RESYNC: _decode_resync,
    wire.Tag.BYE: _decode_bye,
}


def decode_message(msg: dict[str, Any]) -> wire.Message:
    """Validate one decoded frame and return its typed message."""
    tag = msg.get("t")
    decoder = _DECODERS.get(tag) if type(tag) is str else None
    if decoder is None:
        raise InvalidMessage(f"unknown or missing message type {tag!r}")
    return decoder(msg)
