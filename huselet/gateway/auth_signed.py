"""Signed mode: HUSELET-HMAC-SHA256 verification of HTTP requests and framed calls.

:class:`SignatureVerifier` answers "which tenant signed this, and which body
digest did it sign?" or raises a 401 (503 when the replay cache is full). The
order is the cheapest refusal first: the Authorization shape, the key (known,
valid now), the tenant's quota (a throttled tenant costs no HMAC), the
timestamp's skew, then the signature (constant time), then the replay cache.

This is the hot path of a node with tenants, so it avoids what costs in
CPython here: the HMAC's inner and outer SHA-256 states are computed once per
key (a request then costs two hash copies instead of a keyed OpenSSL context),
hashers are copied rather than constructed, the canonical form is built in
one join, and a second's timestamp is parsed once. The bytes are those of
:mod:`huselet.client.signing` and :mod:`protocol.ingress_signing`; the test
vectors in tests/tenants pin both.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping

from huselet.client.signing import (
    ALGORITHM_B,
    CONTENT_HEADER,
    DATE_HEADER,
    REQUIRED_SIGNED,
    SigningError,
    canonical_query,
    format_timestamp,
    parse_authorization,
    parse_timestamp,
)
from huselet.config.auth import AuthSettings
from huselet.gateway.admission_types import (
    AdmissionRequest,
    AuthFailer,
    CallRequest,
    Refusals,
)
from huselet.tenants.hmac_keys import KeyRecord, key_records
from huselet.tenants.keys import EMPTY_RING, KeyRing, TenantSettings
from huselet.tenants.replay import ReplayCacheFull, TenantReplayCaches
from huselet.tenants.stats import RefusalReason
from protocol.ingress_signing import CANONICAL_TAG

_SCHEME = ALGORITHM_B + b" "
_TO_SIGN = ALGORITHM_B + b"\n"  # the string to sign starts with it
_CONTENT_HEADER_B = CONTENT_HEADER.encode()
_DATE_HEADER_B = DATE_HEADER.encode()
_SHA256_HEX = re.compile(rb"[0-9a-f]{64}")
_SHA256_HEX_STR = re.compile(r"[0-9a-f]{64}")
_NONCE = re.compile(r"[!-~]{1,128}")
_BLANK = hashlib.sha256()  # copied, not constructed: cheaper per hash
# Authorization heads (all but the 64-digit signature) remembered per verifier: a
# caller sends the same head with every request. Cleared with every new key ring.
_MAX_HEADS = 1024
# The standard form's head, whose parse is the same whatever signature follows.
_STANDARD_HEAD = re.compile(
    rb"HUSELET-HMAC-SHA256 Credential=[!-+\--~]+, ?SignedHeaders=[!-+\--~]+, ?Signature="
)

# The check to run once the key and tenant are known (the tenant's quota).
TenantCheck = Callable[[str], None]


class _Plan:
    """What one SignedHeaders list means for verification, worked out once per list."""

    __slots__ = ("lines", "names", "tail", "wanted")

    def __init__(self, signed: tuple[bytes, ...]) -> None:
        self.names = signed
        # None when a required name is missing (the request is refused).
        self.wanted = frozenset(signed) if all(n in signed for n in REQUIRED_SIGNED) else None
        # Each signed header's name and its canonical line's start ("name:").
        self.lines = tuple((name, name + b":") for name in signed)
        self.tail = b";".join(signed)  # the canonical request's signed-names line


_plans: dict[tuple[bytes, ...], _Plan] = {}


def _plan(signed: tuple[bytes, ...]) -> _Plan:
    plan = _plans.get(signed)
    if plan is None:
        plan = _Plan(signed)
        if len(_plans) < 256:  # callers use a handful of header sets
            _plans[signed] = plan
    return plan


def call_prefix(function: str, kind: str, timeout_ms: int | None, key_id: str) -> bytes:
    """The first five lines of a framed call's canonical form, each ending in a newline."""
    timeout = b"" if timeout_ms is None else str(timeout_ms).encode()
    fields = (CANONICAL_TAG, function.encode(), kind.encode(), timeout, key_id.encode(), b"")
    return b"\n".join(fields)


def sha256_hex(data: bytes) -> bytes:
    """Lowercase hex SHA-256 of ``data``, as ASCII bytes."""
    h = _BLANK.copy()
    h.update(data)
    return h.hexdigest().encode("ascii")


class SignatureVerifier:
    def __init__(
        self,
        settings: AuthSettings,
        *,
        refusals: Refusals,
        fail: AuthFailer,
        check_tenant: TenantCheck,
        wall_clock: Callable[[], float],
    ) -> None:
        self._refuse = refusals.refuse
        self._fail = fail
        self._check_tenant = check_tenant
        self._wall = wall_clock
        self.ring: KeyRing = EMPTY_RING
        self._records: Mapping[str, KeyRecord] = {}
        # Authorization head -> (key id, plan) of the standard form, parsed once.
        self._heads: dict[bytes, tuple[str, _Plan]] = {}
        # (function, kind, timeout_ms, key id) -> a framed call's canonical prefix.
        self._call_prefixes: dict[tuple[str, str, int | None, str], bytes] = {}
        self.replay = TenantReplayCaches(settings.replay_cache_bytes, settings.max_skew_s + 1)
        self._last_date, self._last_at = b"", 0.0
        self.configure(settings)

    def configure(self, settings: AuthSettings) -> None:
        self._skew_s = float(settings.max_skew_s)
        self.replay.configure(settings.replay_cache_bytes, settings.max_skew_s + 1)

    def set_keys(self, ring: KeyRing) -> None:
        self.ring = ring
        self._records = key_records(ring)
        self._heads, self._call_prefixes = {}, {}
        self.replay.keep_only({entry.tenant for entry in ring.keys.values()}, self._wall())

    # --- HTTP ------------------------------------------------------------------------------

    def verify_http(self, request: AdmissionRequest) -> tuple[TenantSettings, bytes]:
        """The tenant whose key signed ``request``, and the body digest it signed."""
        peer = request.peer
        authorization = request.authorization
        if authorization is None or not authorization.startswith(_SCHEME):
            raise self._fail(
                RefusalReason.MISSING_AUTH,
                "this node requires signed requests (Authorization: HUSELET-HMAC-SHA256 ...)",
                peer,
            )
        # The standard form's head is the same on every request of a caller: it is
        # parsed once (the regex of parse_authorization, then this dict lookup).
        split = len(authorization) - 64
        head = self._heads.get(authorization[:split])
        if head is not None and _SHA256_HEX.fullmatch(authorization, split) is not None:
            key_id, plan = head
            signature = authorization[split:]
            inline: tuple[tuple[bytes, bytes], ...] = ()
        else:
            try:
                creds = parse_authorization(authorization)
            except SigningError as exc:
                raise self._fail(RefusalReason.MALFORMED, str(exc), peer) from None
            key_id, signature, inline = creds.key_id, creds.signature, creds.inline
            plan = _plan(creds.signed_headers)
            if (
                key_id in self._records
                and len(self._heads) < _MAX_HEADS
                and _STANDARD_HEAD.fullmatch(authorization, 0, split) is not None
            ):
                self._heads[authorization[:split]] = (key_id, plan)
        record, now = self._key(key_id, peer)
        tenant = record.tenant
        values = self._signed_values(plan, inline, request.headers, peer, tenant.name)
        date = values[_DATE_HEADER_B]
        at = self._timestamp(date, now, peer, tenant.name)
        content = values[_CONTENT_HEADER_B]
        if _SHA256_HEX.fullmatch(content) is None:
            raise self._fail(
                RefusalReason.MALFORMED,
                "X-Huselet-Content-Sha256 must be 64 lowercase hex digits",
                peer,
                tenant.name,
            )
        # The canonical request of huselet.client.signing, in one join. (A plain
        # loop: chained map() over bytes.__add__ was twice as slow on 3.11.)
        query = request.query
        parts = [request.method, request.path, canonical_query(query) if query else b""]
        for name, line in plan.lines:
            parts.append(line + values[name].strip())
        parts += (b"", plan.tail, content)
        self._check_signature(record, date, b"\n".join(parts), signature, peer, tenant.name)
        self._check_replay(signature, at, now, tenant.name)
        return tenant, content

    def _signed_values(
        self,
        plan: _Plan,
        inline: tuple[tuple[bytes, bytes], ...],
        headers: Iterable[tuple[bytes, bytes]],
        peer: str,
        tenant: str,
    ) -> dict[bytes, bytes]:
        signed, wanted = plan.names, plan.wanted
        if wanted is None:
            raise self._fail(
                RefusalReason.MALFORMED,
                "SignedHeaders must include host, x-huselet-content-sha256 and x-huselet-date",
                peer,
                tenant,
            )
        # The compact form's parameters stand for the headers they name.
        values = dict(inline)
        if values and not wanted.issuperset(values):
            raise self._fail(
                RefusalReason.MALFORMED,
                "Date, Nonce and ContentSha256 must be signed (as the headers they stand for)",
                peer,
                tenant,
            )
        has_content_type = False
        for name, value in headers:
            if name in wanted:
                if name in values:
                    raise self._fail(
                        RefusalReason.MALFORMED,
                        f"signed header {name.decode('ascii')} appears more than once",
                        peer,
                        tenant,
                    )
                values[name] = value
            elif name == b"content-type":
                has_content_type = True
        if has_content_type:
            # It decides how the body is decoded: it must not be changeable in transit.
            raise self._fail(
                RefusalReason.MALFORMED, "content-type must be a signed header", peer, tenant
            )
        if len(values) != len(signed):
            missing = next(name for name in signed if name not in values)
            raise self._fail(
                RefusalReason.MALFORMED,
                f"signed header {missing.decode('ascii')} is not in the request",
                peer,
                tenant,
            )
        return values

    # --- framed calls ------------------------------------------------------------------------

    def verify_call(self, call: CallRequest) -> tuple[TenantSettings, bytes]:
        """The tenant whose key signed ``call``, and the event digest it signed."""
        peer = call.peer
        auth = call.auth
        if auth is None:
            raise self._fail(
                RefusalReason.MISSING_AUTH,
                "this node requires signed calls (a call frame with an auth map)",
                peer,
            )
        record, now = self._key(auth.key_id, peer)
        tenant = record.tenant
        try:
            date = auth.date.encode("ascii")
        except UnicodeEncodeError:
            date = b"?"  # fails the timestamp's shape below
        at = self._timestamp(date, now, peer, tenant.name)
        sha_ok = _SHA256_HEX_STR.fullmatch(auth.body_sha256) is not None
        if not sha_ok or _NONCE.fullmatch(auth.nonce) is None:
            raise self._fail(
                RefusalReason.MALFORMED,
                "auth sha256 must be 64 lowercase hex digits, nonce 1 to 128 printable ASCII",
                peer,
                tenant.name,
            )
        # The canonical form of protocol.ingress_signing: its first five lines are
        # the same on every call of a caller to a function, so they are built once.
        fields = (call.function, call.kind, call.timeout_ms, auth.key_id)
        prefix = self._call_prefixes.get(fields)
        if prefix is None:
            prefix = call_prefix(*fields)
            if len(self._call_prefixes) < _MAX_HEADS:
                self._call_prefixes[fields] = prefix
        body_sha256 = auth.body_sha256.encode()
        canonical = prefix + auth.nonce.encode() + b"\n" + body_sha256
        signature = auth.signature.encode("utf-8", "replace")
        self._check_signature(record, date, canonical, signature, peer, tenant.name)
        self._check_replay(signature, at, now, tenant.name)
        return tenant, body_sha256

    # --- shared steps ----------------------------------------------------------------------

    def _key(self, key_id: str, peer: str) -> tuple[KeyRecord, float]:
        record = self._records.get(key_id)
        if record is None:  # no such key, or its tenant is not in the ring
            raise self._fail(RefusalReason.UNKNOWN_KEY, "unknown access key", peer)
        now = self._wall()
        if now < record.not_before or now >= record.expires:
            raise self._fail(
                RefusalReason.KEY_NOT_VALID,
                "the access key is not valid now (not yet valid, or expired)",
                peer,
                record.tenant.name,
            )
        # A tenant over its quota is refused before any hashing is spent on it.
        self._check_tenant(record.tenant.name)
        return record, now

    def _timestamp(self, date: bytes, now: float, peer: str, tenant: str) -> float:
        if date == self._last_date:  # most requests of a second share their timestamp
            at = self._last_at
        else:
            try:
                at = parse_timestamp(date)
            except SigningError as exc:
                raise self._fail(RefusalReason.MALFORMED, str(exc), peer, tenant) from None
            self._last_date, self._last_at = date, at
        if abs(now - at) > self._skew_s:
            raise self._fail(
                RefusalReason.STALE_TIMESTAMP,
                f"the request timestamp {date.decode('ascii')} is outside the allowed skew of "
                f"{self._skew_s:g} s from the node's clock ({format_timestamp(now)})",
                peer,
                tenant,
            )
        return at

    def _check_signature(
        self,
        record: KeyRecord,
        date: bytes,
        canonical: bytes,
        sent: bytes,
        peer: str,
        tenant: str,
    ) -> None:
        to_sign = _TO_SIGN + date + b"\n" + sha256_hex(canonical)
        if not hmac.compare_digest(record.mac.hexdigest(to_sign), sent):
            raise self._fail(
                RefusalReason.BAD_SIGNATURE,
                "the signature does not match the request",
                peer,
                tenant,
            )

    def _check_replay(self, signature: bytes, at: float, now: float, tenant: str) -> None:
        try:
            # Keyed by the signed second: a replay carries the same timestamp.
            replayed = self.replay.seen(tenant, signature, int(at), now)
        except ReplayCacheFull:
            raise self._refuse(
                RefusalReason.REPLAY_CACHE_FULL,
                "this tenant's replay cache (auth.replay_cache_mb) is full of signatures "
                "still inside the skew window; retry shortly",
                503,
                tenant,
                retry_after_s=1,
            ) from None
        if replayed:
            raise self._refuse(
                RefusalReason.REPLAY,
                "this signature was already used; sign every request anew",
                401,
                tenant,
            )
