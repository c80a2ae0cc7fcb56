"""Signed framed calls, sans-IO: the canonical form and signature of FRAMED.md's vectors.

The expected values were computed with printf, sha256sum and openssl (see
FRAMED.md "Signed calls"), not with the code under test.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest

from protocol.errors import MalformedFrame
from protocol.frames import encode_frame
from protocol.ingress import Call, ServerConnection, State
from protocol.ingress_client import ClientConnection
from protocol.ingress_signing import CallAuth, canonical_call, sign_call

KEY_ID = "HKEXAMPLEKEY0000"
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
EVENT = b'{"name":"ops"}'
DATE = "20261130T045119Z"
NONCE = "0123456789abcdef"
EVENT_SHA256 = "6dc2bc1e36b74796993a72ea3ef9c50c2c140047f3ae887488a86222ec557842"
# (timeout_ms, sha256 of the canonical call, signature)
VECTORS = [
    (
        5000,
        "f1260e6ea2e877a9fca98601d61a1e01ca44f79f8b8027bc683263e36958c0c0",
        "167618b49a0a8ef4690a4c3a2b5a8746473e14c13ceadf7fb8020b5ec8d34955",
    ),
    (
        None,
        "cbf10dbc1be228bd843c8640aad9a040713c945eb8c926b5ad158b07e5278940",
        "2295a0816b66323adc11796a2452326513fcfb946da7b7b809bc4fd968760357",
    ),
]


@pytest.mark.parametrize(("timeout_ms", "canonical_sha256", "signature"), VECTORS)
def test_vectors(timeout_ms: int | None, canonical_sha256: str, signature: str) -> None:
    canonical = canonical_call("hello", "json", timeout_ms, KEY_ID, NONCE, EVENT_SHA256)
    expected_lines = [
        b"framed-call",
        b"hello",
        b"json",
        b"" if timeout_ms is None else str(timeout_ms).encode(),
        KEY_ID.encode(),
        NONCE.encode(),
        EVENT_SHA256.encode(),
    ]
    assert canonical == b"\n".join(expected_lines)
    assert hashlib.sha256(canonical).hexdigest() == canonical_sha256
    auth = sign_call(KEY_ID, SECRET, "hello", EVENT, "json", timeout_ms, date=DATE, nonce=NONCE)
    assert auth == CallAuth(KEY_ID, DATE, NONCE, EVENT_SHA256, signature)
    # And the stdlib's HMAC agrees with the vector (the string to sign of the README).
    to_sign = f"HUSELET-HMAC-SHA256\n{DATE}\n{canonical_sha256}".encode()
    assert hmac.new(SECRET.encode(), to_sign, "sha256").hexdigest() == signature


def test_every_signed_field_changes_the_signature() -> None:
    def sig(
        fn: str = "hello",
        event: bytes = EVENT,
        kind: str = "json",
        timeout: int = 5000,
        date: str = DATE,
        nonce: str = NONCE,
        key_id: str = KEY_ID,
    ) -> str:
        return sign_call(key_id, SECRET, fn, event, kind, timeout, date=date, nonce=nonce).signature

    reference = sig()
    changed = [
        sig(fn="hellp"),
        sig(event=b'{"name":"opz"}'),
        sig(kind="bytes"),
        sig(timeout=5001),
        sig(date="20261130T045120Z"),
        sig(nonce="x"),
        sig(key_id="HKEXAMPLEKEY0001"),
    ]
    assert reference not in changed and len(set(changed)) == len(changed)


def test_a_signed_call_crosses_the_wire_with_its_auth() -> None:
    client = ClientConnection()
    server = ServerConnection()
    server.receive_data(client.hello())
    server.next_event()
    client.receive_data(server.welcome())
    client.next_event()
    auth = sign_call(KEY_ID, SECRET, "hello", EVENT, "json", None, date=DATE, nonce=NONCE)
    _, frame = client.call("hello", EVENT, "json", auth=auth)
    server.receive_data(frame)
    call = server.next_event()
    assert isinstance(call, Call) and call.auth == auth
    _, unsigned = client.call("hello", EVENT, "json")
    server.receive_data(unsigned)
    plain = server.next_event()
    assert isinstance(plain, Call) and plain.auth is None


@pytest.mark.parametrize(
    "auth",
    [
        "not a map",
        {"key": KEY_ID, "date": DATE, "nonce": NONCE, "sha256": EVENT_SHA256},  # no signature
        {"key": KEY_ID, "date": DATE, "nonce": 7, "sha256": EVENT_SHA256, "signature": "00"},
        {"key": "k" * 129, "date": DATE, "nonce": NONCE, "sha256": "0", "signature": "00"},
    ],
)
def test_a_mistyped_auth_map_closes_the_connection(auth: object) -> None:
    server = ServerConnection()
    server.receive_data(ClientConnection().hello())
    server.next_event()
    server.welcome()
    msg = Call(1, "hello", EVENT, "json").encode()
    msg["auth"] = auth
    server.receive_data(encode_frame(msg))
    with pytest.raises(MalformedFrame):
        server.next_event()
    assert server.state is State.CLOSED
