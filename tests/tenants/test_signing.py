"""HUSELET-HMAC-SHA256 against vectors computed by a shell script (printf, sha256sum,
openssl: tests/tenants/make_vectors.sh), and the parsing rules of the scheme."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from huselet.client import signing
from huselet.client.signing import (
    AccessKey,
    SigningError,
    canonical_query,
    key_from_env,
    load_key_file,
    parse_authorization,
    parse_timestamp,
    sign_request,
)

VECTORS = json.loads((Path(__file__).parent / "signing_vectors.json").read_text())["vectors"]


def _headers(v: dict[str, Any]) -> dict[str, str]:
    headers = {"Host": v["host"]}
    if v["content_type"]:
        headers["Content-Type"] = v["content_type"]
    return headers


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vectors(v: dict[str, Any]) -> None:
    at = parse_timestamp(v["date"].encode())
    got = sign_request(
        AccessKey(v["key_id"], v["secret"]),
        v["method"],
        v["target"],
        _headers(v),
        v["body"].encode(),
        at=at,
        nonce=v["nonce"],
    )
    assert got["x-huselet-content-sha256"] == v["body_sha256"]
    assert got["x-huselet-date"] == v["date"]
    assert got["authorization"] == v["authorization"]
    # The intermediate forms, built from the pieces the node sees.
    path, _, query = v["target"].encode().partition(b"?")
    signed = sorted(
        [(k.lower().encode(), val.encode()) for k, val in _headers(v).items()]
        + [(k.encode(), val.encode()) for k, val in got.items() if k != "authorization"]
    )
    canonical = signing.canonical_request(
        v["method"].encode(), path, query, signed, v["body_sha256"].encode()
    )
    assert canonical.decode() == v["canonical_request"]
    to_sign = signing.string_to_sign(v["date"].encode(), canonical)
    assert to_sign.decode() == v["string_to_sign"]
    assert signing.signature(v["secret"].encode(), to_sign).decode() == v["signature"]


def test_signing_needs_no_third_party_import() -> None:
    code = (
        "import sys, huselet.client.signing\n"
        "bad = {'trio', 'h11', 'msgpack', 'zstandard', 'watchdog'} & set(sys.modules)\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_canonical_query_sorts_raw_pairs() -> None:
    assert canonical_query(b"") == b""
    assert canonical_query(b"b=2&a=1&&flag&a=0") == b"a=0&a=1&b=2&flag="
    assert canonical_query(b"x=%20&x=+") == b"x=%20&x=+"  # not decoded: signed as sent


@pytest.mark.parametrize(
    "header",
    [
        b"Bearer abc",
        b"HUSELET-HMAC-SHA256 Credential=K",
        b"HUSELET-HMAC-SHA256 Credential=K, SignedHeaders=host, Signature=x, Extra=y",
        b"HUSELET-HMAC-SHA256 Credential=K, SignedHeaders=x-b;host, Signature=x",
        b"HUSELET-HMAC-SHA256 Credential=K, SignedHeaders=Host, Signature=x",
        b"HUSELET-HMAC-SHA256 Credential=K, Credential=K, Signature=x",
    ],
)
def test_malformed_authorization_is_refused(header: bytes) -> None:
    with pytest.raises(SigningError):
        parse_authorization(header)


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_the_compact_form_carries_the_same_signature(v: dict[str, Any]) -> None:
    at = parse_timestamp(v["date"].encode())
    key = AccessKey(v["key_id"], v["secret"])
    body = v["body"].encode()
    got = sign_request(
        key, v["method"], v["target"], _headers(v), body, at=at, nonce=v["nonce"], compact=True
    )
    assert list(got) == ["authorization"]  # no x-huselet-* headers of their own
    creds = parse_authorization(got["authorization"].encode())
    assert creds.signature == v["signature"].encode()
    assert dict(creds.inline) == {
        b"x-huselet-date": v["date"].encode(),
        b"x-huselet-nonce": v["nonce"].encode(),
        b"x-huselet-content-sha256": v["body_sha256"].encode(),
    }
    # Any order of the parameters, with or without spaces (the precise parser).
    header = got["authorization"].encode()
    scheme, _, params = header.partition(b" ")
    reordered = scheme + b" " + b",".join(reversed(params.split(b", ")))
    again = parse_authorization(reordered)
    assert (again.signature, dict(again.inline)) == (creds.signature, dict(creds.inline))


def test_authorization_fields() -> None:
    creds = parse_authorization(
        b"HUSELET-HMAC-SHA256 Credential=HK1, SignedHeaders=host;x-huselet-date, Signature=ab"
    )
    assert creds.key_id == "HK1" and creds.signed_headers == (b"host", b"x-huselet-date")
    assert creds.signature == b"ab"


@pytest.mark.parametrize(
    "value", [b"2026-11-30T04:51:19Z", b"20261130T045119", b"20261330T045119Z", b"2026113xT045119Z"]
)
def test_bad_timestamps(value: bytes) -> None:
    with pytest.raises(SigningError):
        parse_timestamp(value)


def test_timestamp_round_trip() -> None:
    assert parse_timestamp(b"19700101T000100Z") == 60.0
    assert signing.format_timestamp(60) == "19700101T000100Z"


def test_key_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"key_id": "HK1234", "secret": "s" * 20}))
    path.chmod(0o644)
    with pytest.raises(SigningError, match="chmod 600"):
        load_key_file(path)
    path.chmod(0o600)
    key = load_key_file(path)
    assert key.key_id == "HK1234" and "s" * 20 not in repr(key)


def test_key_from_env(tmp_path: Path) -> None:
    assert key_from_env({}) is None
    key = key_from_env({"HUSELET_ACCESS_KEY_ID": "HK1", "HUSELET_SECRET_ACCESS_KEY": "x"})
    assert key == AccessKey("HK1", "x")
    with pytest.raises(SigningError, match="both"):
        key_from_env({"HUSELET_ACCESS_KEY_ID": "HK1"})


def test_generated_keys_are_distinct_and_strong() -> None:
    a, b = signing.generate_key(), signing.generate_key()
    assert a.key_id != b.key_id and a.secret != b.secret
    assert a.key_id.startswith("HK") and len(a.secret) >= 43


def test_keygen_writes_a_private_key_file(tmp_path: Path) -> None:
    out = tmp_path / "caller.json"
    done = subprocess.run(
        [sys.executable, "-m", "huselet", "keygen", "-t", "acme", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert os.stat(out).st_mode & 0o777 == 0o600
    key = load_key_file(out)
    assert f'id = "{key.key_id}"' in done.stdout and f'secret = "{key.secret}"' in done.stdout
    again = subprocess.run(
        [sys.executable, "-m", "huselet", "keygen", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert again.returncode == 1 and "File exists" in again.stderr  # never overwrites a key
