"""Request signing: HUSELET-HMAC-SHA256, a simplified AWS SigV4 (standard library only).

The node and its callers share this module, so both build the same bytes:

canonical request (every line ends with ``\\n`` except the last)::

    METHOD
    /path/exactly/as/sent
    canonical query: a=1&b=2   (raw parameters sorted by name, then value; "" if none)
    name:value                 (one line per signed header: lowercase name, value trimmed)
    ...
    (empty line)
    signed;header;names        (sorted, lowercase, joined by ";")
    hex sha256 of the body     (the X-Huselet-Content-Sha256 header)

string to sign::

    HUSELET-HMAC-SHA256
    20261130T045119Z           (X-Huselet-Date, UTC, basic ISO 8601)
    hex sha256 of the canonical request

signature: lowercase hex of HMAC-SHA256(secret as UTF-8, string to sign), sent as::

    Authorization: HUSELET-HMAC-SHA256 Credential=<key id>, SignedHeaders=<names>, Signature=<hex>

or, in the compact form (``sign_request(..., compact=True)``), with the date,
nonce and body digest as parameters of that one header instead of three
headers of their own::

    Authorization: HUSELET-HMAC-SHA256 Credential=<key id>, SignedHeaders=<names>,
        Date=<x-huselet-date>, Nonce=<x-huselet-nonce>, ContentSha256=<hex>, Signature=<hex>

The canonical request and the signature are the same either way: the
parameters stand for the headers they name (which stay in SignedHeaders).
Three headers fewer is less for the node's HTTP parser to do per request.

Differences from SigV4: no derived signing key (date/region/service), no URI
re-encoding (the path and the query parameters are signed as sent), header
values are only trimmed. Signed headers must include ``host``,
``x-huselet-date`` and ``x-huselet-content-sha256``, and ``content-type`` when
the request has one. :func:`sign_request` also signs a random
``x-huselet-nonce`` so two identical requests in the same second differ (the
node refuses a signature it has already seen).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

ALGORITHM = "HUSELET-HMAC-SHA256"
ALGORITHM_B = ALGORITHM.encode("ascii")
DATE_HEADER = "x-huselet-date"
CONTENT_HEADER = "x-huselet-content-sha256"
NONCE_HEADER = "x-huselet-nonce"
REQUIRED_SIGNED = (b"host", DATE_HEADER.encode(), CONTENT_HEADER.encode())
_DATE_B, _NONCE_B, _CONTENT_B = DATE_HEADER.encode(), NONCE_HEADER.encode(), CONTENT_HEADER.encode()
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# Environment variables `huselet invoke` (and key_from_env) read a key from.
ENV_KEY_ID = "HUSELET_ACCESS_KEY_ID"
ENV_SECRET = "HUSELET_SECRET_ACCESS_KEY"
ENV_KEY_FILE = "HUSELET_KEY_FILE"


class SigningError(ValueError):
    """A malformed Authorization header, timestamp or key file."""


@dataclass(frozen=True)
class AccessKey:
    key_id: str
    secret: str

    def __repr__(self) -> str:  # never print a secret by accident
        return f"AccessKey(key_id={self.key_id!r}, secret=...)"


class Credentials(NamedTuple):
    """The parts of an ``Authorization: HUSELET-HMAC-SHA256 …`` header.

    A NamedTuple rather than a frozen dataclass: a node builds one per signed
    request, and a tuple is built in C.
    """

    key_id: str
    signed_headers: tuple[bytes, ...]
    signature: bytes  # lowercase hex, as sent
    # The compact form's Date, Nonce and ContentSha256, as the headers they stand for.
    inline: tuple[tuple[bytes, bytes], ...] = ()


# --- canonical form -----------------------------------------------------------------


def canonical_query(query: bytes) -> bytes:
    """Raw ``name=value`` pairs sorted by name, then value; a pair without ``=`` gets one."""
    if not query:
        return b""
    pairs = [part.partition(b"=") for part in query.split(b"&") if part]
    pairs.sort(key=lambda p: (p[0], p[2]))
    return b"&".join(name + b"=" + value for name, _, value in pairs)


def canonical_request(
    method: bytes,
    path: bytes,
    query: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    body_sha256: bytes,
) -> bytes:
    """The canonical request; ``headers`` are the signed ones, (lowercase name, value), sorted."""
    lines = [method, path, canonical_query(query)]
    names = []
    for name, value in headers:
        lines.append(name + b":" + value.strip())
        names.append(name)
    lines.append(b"")
    lines.append(b";".join(names))
    lines.append(body_sha256)
    return b"\n".join(lines)


def string_to_sign(timestamp: bytes, canonical: bytes) -> bytes:
    return b"\n".join((ALGORITHM_B, timestamp, hashlib.sha256(canonical).hexdigest().encode()))


def signature(secret: bytes, to_sign: bytes) -> bytes:
    """Lowercase hex HMAC-SHA256 of ``to_sign`` under ``secret``."""
    return hmac.digest(secret, to_sign, "sha256").hex().encode("ascii")


def format_timestamp(at: float | None = None) -> str:
    return time.strftime(TIMESTAMP_FORMAT, time.gmtime(time.time() if at is None else at))


def parse_timestamp(value: bytes) -> float:
    """Seconds since the epoch of a ``YYYYMMDDTHHMMSSZ`` timestamp; SigningError if malformed."""
    if len(value) != 16 or value[8:9] != b"T" or value[15:16] != b"Z":
        raise SigningError("X-Huselet-Date must look like 20261130T045119Z")
    digits = value[:8] + value[9:15]
    if not digits.isdigit():
        raise SigningError("X-Huselet-Date must look like 20261130T045119Z")
    try:
        return datetime(
            int(digits[0:4]),
            int(digits[4:6]),
            int(digits[6:8]),
            int(digits[8:10]),
            int(digits[10:12]),
            int(digits[12:14]),
            tzinfo=UTC,
        ).timestamp()
    except ValueError:
        raise SigningError("X-Huselet-Date is not a valid date and time") from None


# The common, well-formed shape in one C-level match (the hot path of a node);
# anything else goes through the slower parser below for a precise error.
_AUTHORIZATION = re.compile(
    rb"HUSELET-HMAC-SHA256 Credential=([!-+\--~]+), ?SignedHeaders=([!-+\--~]+), ?"
    rb"Signature=([0-9a-f]{64})"
)
_COMPACT = re.compile(
    rb"HUSELET-HMAC-SHA256 Credential=([!-+\--~]+), ?SignedHeaders=([!-+\--~]+), ?"
    rb"Date=([0-9]{8}T[0-9]{6}Z), ?Nonce=([!-+\--~]{1,128}), ?ContentSha256=([0-9a-f]{64}), ?"
    rb"Signature=([0-9a-f]{64})"
)
# Compact-form parameters and the headers they stand for.
INLINE_PARAMS = {
    b"Date": DATE_HEADER.encode(),
    b"Nonce": NONCE_HEADER.encode(),
    b"ContentSha256": CONTENT_HEADER.encode(),
}
_signed_names_cache: dict[bytes, tuple[bytes, ...]] = {}


def _signed_names(value: bytes) -> tuple[bytes, ...]:
    """SignedHeaders as a tuple; checked once per distinct value (callers reuse a few)."""
    names = _signed_names_cache.get(value)
    if names is None:
        names = tuple(value.split(b";"))
        if list(names) != sorted(set(names)) or not all(n and n == n.lower() for n in names):
            raise SigningError("SignedHeaders must be distinct lowercase names in sorted order")
        if len(_signed_names_cache) < 256:
            _signed_names_cache[value] = names
    return names


def parse_authorization(value: bytes) -> Credentials:
    """The credential, signed header names and signature; SigningError if malformed."""
    match = _AUTHORIZATION.fullmatch(value)
    if match is not None:
        key_id, names, sig = match.groups()
        return Credentials(key_id.decode("ascii"), _signed_names(names), sig)
    match = _COMPACT.fullmatch(value)
    if match is not None:
        key_id, names, date, nonce, content, sig = match.groups()
        compact = ((_DATE_B, date), (_NONCE_B, nonce), (_CONTENT_B, content))
        return Credentials(key_id.decode("ascii"), _signed_names(names), sig, compact)
    scheme, _, rest = value.partition(b" ")
    if scheme != ALGORITHM_B:
        raise SigningError(f"the Authorization scheme must be {ALGORITHM}")
    fields: dict[bytes, bytes] = {}
    for part in rest.split(b","):
        name, eq, val = part.strip().partition(b"=")
        if not eq or name in fields:
            raise SigningError("malformed Authorization header")
        fields[name] = val
    try:
        key_id = fields[b"Credential"].decode("ascii")
        names = fields[b"SignedHeaders"]
        sig = fields[b"Signature"]
    except (KeyError, UnicodeDecodeError):
        raise SigningError(
            "the Authorization header needs Credential, SignedHeaders and Signature"
        ) from None
    inline = tuple(
        (header, fields[param]) for param, header in INLINE_PARAMS.items() if param in fields
    )
    if len(fields) != 3 + len(inline) or not key_id:
        raise SigningError("malformed Authorization header")
    return Credentials(key_id, _signed_names(names), sig, inline)


# --- signing (the caller's side) ------------------------------------------------------


def sign_request(
    key: AccessKey,
    method: str,
    target: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    at: float | None = None,
    nonce: str | None = None,
    compact: bool = False,
) -> dict[str, str]:
    """The headers to add to a request so a node verifies it as ``key``'s.

    ``target`` is the path with its query, exactly as it will be sent;
    ``headers`` must contain ``Host`` (and ``Content-Type`` if the request has
    one), spelled as they will be sent. Every header in ``headers`` is signed.
    ``compact``: only an Authorization header, carrying the date, nonce and
    body digest as parameters (same signature; cheaper for the node to parse).
    """
    added = {
        DATE_HEADER: format_timestamp(at),
        CONTENT_HEADER: hashlib.sha256(body).hexdigest(),
        NONCE_HEADER: secrets.token_hex(8) if nonce is None else nonce,
    }
    lowered = {k.lower(): v for k, v in headers.items()}
    if "host" not in lowered:
        raise SigningError("the Host header must be given (and is signed)")
    lowered.update(added)
    signed = sorted((k.encode("latin-1"), v.encode("latin-1")) for k, v in lowered.items())
    path, _, query = target.encode("latin-1").partition(b"?")
    canonical = canonical_request(
        method.upper().encode("ascii"), path, query, signed, added[CONTENT_HEADER].encode()
    )
    to_sign = string_to_sign(added[DATE_HEADER].encode(), canonical)
    sig = signature(key.secret.encode("utf-8"), to_sign).decode()
    names = ";".join(name.decode() for name, _ in signed)
    if compact:
        params = (
            f"Date={added[DATE_HEADER]}, Nonce={added[NONCE_HEADER]}, "
            f"ContentSha256={added[CONTENT_HEADER]}, "
        )
        return {
            "authorization": f"{ALGORITHM} Credential={key.key_id}, SignedHeaders={names}, "
            f"{params}Signature={sig}"
        }
    added["authorization"] = (
        f"{ALGORITHM} Credential={key.key_id}, SignedHeaders={names}, Signature={sig}"
    )
    return added


# --- keys -------------------------------------------------------------------------------


def generate_key() -> AccessKey:
    """A fresh key pair: a recognisable id and 256 random bits of secret."""
    key_id = "HK" + base64.b32encode(secrets.token_bytes(10)).decode("ascii")
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")
    return AccessKey(key_id, secret)


def load_key_file(path: Path) -> AccessKey:
    """A key from a JSON file ``{"key_id": …, "secret": …}`` that only its owner can read."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SigningError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SigningError(f"{path} is not a JSON key file") from None
    if mode & 0o077:
        raise SigningError(f"{path} is readable by others (mode {mode & 0o777:o}); chmod 600")
    try:
        data = json.loads(text)
    except ValueError:
        raise SigningError(f"{path} is not a JSON key file") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), str) and data.get(k) for k in ("key_id", "secret")
    ):
        raise SigningError(f'{path} must hold {{"key_id": "…", "secret": "…"}}')
    return AccessKey(data["key_id"], data["secret"])


def key_from_env(env: Mapping[str, str] | None = None) -> AccessKey | None:
    """The key named by HUSELET_KEY_FILE, or by HUSELET_ACCESS_KEY_ID + _SECRET_ACCESS_KEY."""
    env = os.environ if env is None else env
    if env.get(ENV_KEY_FILE):
        return load_key_file(Path(env[ENV_KEY_FILE]))
    key_id, secret = env.get(ENV_KEY_ID), env.get(ENV_SECRET)
    if key_id and secret:
        return AccessKey(key_id, secret)
    if key_id or secret:
        raise SigningError(f"set both {ENV_KEY_ID} and {ENV_SECRET}")
    return None
