"""Signed framed calls: HUSELET-HMAC-SHA256 over a CALL frame's fields, sans-IO.

The framed ingress's counterpart of the HTTP request signature
(:mod:`huselet.client.signing`, README "Tenants and signed requests"): same
algorithm, same string to sign, same secrets, same replay rule; only the
canonical form differs, because a call has no method, path or headers.

canonical call (lines joined by ``\\n``, no trailing newline)::

    framed-call
    <fn>                      the function name
    <kind>                    json | bytes | text: how the handler receives the event
    <timeout_ms>              decimal, or "" when the call sets none
    <key id>
    <nonce>                   random, per call: two identical calls differ
    <hex sha256 of the event>

string to sign (as for HTTP)::

    HUSELET-HMAC-SHA256
    <date>                    UTC, basic ISO 8601: 20261130T045119Z
    <hex sha256 of the canonical call>

signature: lowercase hex HMAC-SHA256(secret as UTF-8, string to sign). A
canonical HTTP request's second line is a path (it starts with ``/``), a
canonical call's is a function name (it never does), so a signature made for
one can never verify as the other.

The ``auth`` map a signed CALL carries::

    {"key": <key id>, "date": <date>, "nonce": <nonce>,
     "sha256": <hex sha256 of the event>, "signature": <hex>}

Time and randomness are passed in (``at``, ``nonce``): no clock here.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from protocol.errors import MalformedFrame
from protocol.frames import optional_field, required_field

ALGORITHM = b"HUSELET-HMAC-SHA256"
CANONICAL_TAG = b"framed-call"
# Generous bounds on what a node stores or hashes of an auth map; the node
# checks the exact shapes (and answers 401 when they are wrong).
_MAX_FIELD_CHARS = {"key": 128, "date": 32, "nonce": 128, "sha256": 128, "signature": 128}


@dataclass(frozen=True, slots=True)
class CallAuth:
    """A CALL's signature and what it covers beyond the call's own fields."""

    key_id: str
    date: str  # YYYYMMDDTHHMMSSZ
    nonce: str
    body_sha256: str  # lowercase hex of the event's SHA-256
    signature: str  # lowercase hex

    def encode(self) -> dict[str, Any]:
        return {
            "key": self.key_id,
            "date": self.date,
            "nonce": self.nonce,
            "sha256": self.body_sha256,
            "signature": self.signature,
        }

    @classmethod
    def decode(cls, msg: dict[str, Any]) -> CallAuth:
        values = {}
        for name, limit in _MAX_FIELD_CHARS.items():
            value = required_field(msg, name, str)
            if len(value) > limit:
                raise MalformedFrame(f"call auth {name} is longer than {limit} characters")
            values[name] = value
        return cls(
            key_id=values["key"],
            date=values["date"],
            nonce=values["nonce"],
            body_sha256=values["sha256"],
            signature=values["signature"],
        )


def decode_auth(msg: dict[str, Any]) -> CallAuth | None:
    """The ``auth`` map of a CALL frame, if it has one (MalformedFrame if mistyped)."""
    raw = optional_field(msg, "auth", dict)
    return None if raw is None else CallAuth.decode(raw)


def canonical_call(
    fn: str, kind: str, timeout_ms: int | None, key_id: str, nonce: str, body_sha256: str
) -> bytes:
    """The canonical form of a call (see the module doc); text is UTF-8."""
    return b"\n".join(
        (
            CANONICAL_TAG,
            fn.encode(),
            kind.encode(),
            b"" if timeout_ms is None else str(timeout_ms).encode(),
            key_id.encode(),
            nonce.encode(),
            body_sha256.encode(),
        )
    )


def call_string_to_sign(date: bytes, canonical: bytes) -> bytes:
    return b"\n".join((ALGORITHM, date, hashlib.sha256(canonical).hexdigest().encode()))


def sign_call(
    key_id: str,
    secret: str,
    fn: str,
    event: bytes,
    kind: str,
    timeout_ms: int | None,
    *,
    date: str,
    nonce: str,
) -> CallAuth:
    """The ``auth`` of a call to ``fn`` signed with ``secret`` at ``date``."""
    body_sha256 = hashlib.sha256(event).hexdigest()
    canonical = canonical_call(fn, kind, timeout_ms, key_id, nonce, body_sha256)
    to_sign = call_string_to_sign(date.encode(), canonical)
    sig = hmac.digest(secret.encode(), to_sign, "sha256").hex()
    return CallAuth(key_id, date, nonce, body_sha256, sig)
