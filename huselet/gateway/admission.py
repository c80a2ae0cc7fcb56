"""Admission: the one place that decides whether a request may reach a function.

Transport-free: :meth:`Admission.admit` takes an :class:`AdmissionRequest`
(method, path, query, headers, peer address, function) and returns a
:class:`Ticket` or raises a typed :class:`Refusal` (401 / 403 / 429 / 503,
with the :class:`~huselet.tenants.stats.RefusalReason` it was refused for).
The HTTP ingress calls it after parsing a head and before reading the body;
a framed ingress can call it the same way. Nothing here awaits or does I/O.

Checks, cheapest and least trusting first:

1. the source address against the CIDR allow/deny lists (403);
2. a source whose unauthenticated requests or failed authentications are over
   ``auth.source_rate_per_s`` (429);
3. authentication by mode: *open* (none), *bearer* (the single-tenant token of
   ``gateway.auth_token_file``) or *signed* (``auth.keys_file``:
   HUSELET-HMAC-SHA256, see :mod:`huselet.client.signing`): key known and
   valid now, timestamp within ``max_skew_s``, signature right (constant
   time), never seen before (replay cache) — each failure a 401;
4. the tenant may invoke the function: it owns it (``functions[].tenant``) or
   its keys-file entry grants it by name or prefix (403);
5. rate and concurrency of the tenant, then of the function (429 with
   ``Retry-After`` and the limit named in the reply).

The body is checked afterwards against the signed SHA-256
(:meth:`Ticket.check_body`): a tampered body is a 401 even though the head was
fine. A ticket holds concurrency slots until :meth:`Ticket.release`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from huselet.client.signing import (
    ALGORITHM_B,
    CONTENT_HEADER,
    DATE_HEADER,
    REQUIRED_SIGNED,
    SigningError,
    canonical_request,
    format_timestamp,
    parse_authorization,
    parse_timestamp,
    signature,
    string_to_sign,
)
from huselet.config.auth import AuthSettings, RateLimit
from huselet.errors import HuseletError
from huselet.tenants.keys import EMPTY_RING, KeyRing, TenantSettings
from huselet.tenants.limits import (
    Gate,
    ReplayCache,
    ReplayCacheFull,
    SourceBuckets,
    TokenBucket,
    retry_after,
)
from huselet.tenants.sources import SourcePolicy, parse_networks
from huselet.tenants.stats import AdmissionStats, RefusalReason

_CONTENT_HEADER_B = CONTENT_HEADER.encode()
_DATE_HEADER_B = DATE_HEADER.encode()
_SHA256_HEX = re.compile(rb"[0-9a-f]{64}")
_TENANT_LIMITS = (RefusalReason.TENANT_RATE, RefusalReason.TENANT_CONCURRENCY)
_FUNCTION_LIMITS = (RefusalReason.FUNCTION_RATE, RefusalReason.FUNCTION_CONCURRENCY)
_CODES = {401: "unauthorized", 403: "forbidden", 429: "rate_limited", 503: "unavailable"}


_wanted_cache: dict[tuple[bytes, ...], frozenset[bytes] | None] = {}


def _wanted(signed: tuple[bytes, ...]) -> frozenset[bytes] | None:
    """The signed names as a set, or None when a required one is missing (cached)."""
    try:
        return _wanted_cache[signed]
    except KeyError:
        pass
    wanted = frozenset(signed) if all(n in signed for n in REQUIRED_SIGNED) else None
    if len(_wanted_cache) < 256:  # callers use a handful of header sets
        _wanted_cache[signed] = wanted
    return wanted


class AuthMode(enum.StrEnum):
    OPEN = "open"  # no authentication (loopback, or behind a trusted proxy)
    BEARER = "bearer"  # gateway.auth_token_file: one token, one tenant (the operator)
    SIGNED = "signed"  # auth.keys_file: tenants, signed requests


class Refusal(HuseletError):
    """Admission said no; ``reason`` says why, ``status`` how (401/403/429/503)."""

    def __init__(
        self,
        reason: RefusalReason,
        message: str,
        status: int,
        *,
        retry_after_s: int | None = None,
        challenge: bytes | None = None,
        pause_s: float = 0.0,
    ) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.reason = reason
        self.status = status
        self.code = _CODES[status]
        self.challenge = challenge  # WWW-Authenticate value of a 401
        # How long the ingress should hold this reply back (throttled callers only):
        # a client that retries at once then costs a few requests a second per
        # connection instead of as many as the node can refuse.
        self.pause_s = pause_s


class FunctionPolicy(Protocol):
    """What admission reads of a function's settings (FunctionSettings has it)."""

    @property
    def tenant(self) -> str | None: ...
    @property
    def rate(self) -> RateLimit | None: ...
    @property
    def max_concurrent(self) -> int | None: ...


FunctionLookup = Callable[[str], FunctionPolicy | None]


@dataclass(slots=True)
class AdmissionRequest:
    method: bytes
    path: bytes  # without the query
    query: bytes  # after "?", raw
    headers: Iterable[tuple[bytes, bytes]]  # lowercase names, as received
    authorization: bytes | None
    peer: str  # source IP address ("" when unknown)
    function: str


class Ticket:
    """An admitted request: its tenant, the slots it holds, the body it must have."""

    __slots__ = ("_admission", "_gates", "body_sha256", "tenant")

    def __init__(
        self,
        admission: Admission,
        tenant: str | None,
        gates: tuple[Gate, ...],
        body_sha256: bytes | None,
    ) -> None:
        self._admission = admission
        self.tenant = tenant
        self._gates = gates
        self.body_sha256 = body_sha256

    def check_body(self, body: bytes) -> None:
        """Refuse (401) a body that is not the one the signature covers."""
        expected = self.body_sha256
        if expected is not None and not hmac.compare_digest(
            hashlib.sha256(body).hexdigest().encode("ascii"), expected
        ):
            raise self._admission.refuse(
                RefusalReason.BODY_MISMATCH,
                "the body does not match X-Huselet-Content-Sha256",
                401,
                self.tenant,
            )

    def release(self) -> None:
        """Give back the concurrency slots (idempotent)."""
        for gate in self._gates:
            gate.in_flight -= 1
        self._gates = ()


class _Limited:
    """The rate and concurrency limits of one tenant or function (kept across reloads)."""

    __slots__ = ("bucket", "gate", "source")

    def __init__(self) -> None:
        self.bucket: TokenBucket | None = None
        self.gate = Gate(None)
        self.source: tuple[RateLimit | None, int | None] = (None, None)

    def tune(self, rate: RateLimit | None, max_concurrent: int | None, now: float) -> None:
        if self.source == (rate, max_concurrent):
            return
        self.source = (rate, max_concurrent)
        if rate is None:
            self.bucket = None
        elif self.bucket is None:
            self.bucket = TokenBucket(rate, now)
        else:
            self.bucket.retune(rate, now)
        self.gate.limit = max_concurrent


class Admission:
    def __init__(
        self,
        settings: AuthSettings,
        *,
        bearer_token: bytes | None = None,
        functions: FunctionLookup | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall_clock
        self._functions: FunctionLookup = functions or (lambda name: None)
        self._token = bearer_token
        self.ring: KeyRing = EMPTY_RING
        self.stats = AdmissionStats()
        self._tenants: dict[str, _Limited] = {}
        self._function_limits: dict[str, _Limited] = {}
        self._replay = ReplayCache(settings.replay_cache_size)
        self._source_buckets: SourceBuckets | None = None
        self.settings = settings
        self.mode = AuthMode.OPEN
        self._last_date, self._last_at = b"", 0.0
        self.configure(settings)

    # --- configuration (start and reload) ----------------------------------------------

    def configure(self, settings: AuthSettings) -> None:
        """Apply ``[auth]`` (again): limits are re-tuned, never reset."""
        now = self._clock()
        self.settings = settings
        if settings.keys_file is not None:
            self.mode = AuthMode.SIGNED
        elif self._token is not None:
            self.mode = AuthMode.BEARER
        else:
            self.mode = AuthMode.OPEN
        self._skew_s = float(settings.max_skew_s)
        self._throttle_delay_s = settings.throttle_delay_ms / 1000
        self._replay.capacity = settings.replay_cache_size
        self._sources = SourcePolicy(
            parse_networks(settings.allow_cidrs), parse_networks(settings.deny_cidrs)
        )
        if settings.source_rate is None:
            self._source_buckets = None
        elif self._source_buckets is None:
            self._source_buckets = SourceBuckets(settings.source_rate, settings.max_sources)
        else:
            self._source_buckets.retune(settings.source_rate, settings.max_sources, now)

    def set_keys(self, ring: KeyRing) -> None:
        """A new key ring; tenants that remain keep their buckets and in-flight counts."""
        now = self._clock()
        self.ring = ring
        for name in list(self._tenants):
            if name not in ring.tenants and not self._tenants[name].gate.in_flight:
                del self._tenants[name]
        for tenant in ring.tenants.values():
            self._tenants.setdefault(tenant.name, _Limited()).tune(
                tenant.rate, tenant.max_concurrent, now
            )

    # --- the decision --------------------------------------------------------------------

    def refuse(
        self,
        reason: RefusalReason,
        message: str,
        status: int,
        tenant: str | None,
        *,
        retry_after_s: int | None = None,
    ) -> Refusal:
        """Count the refusal and build it (with the challenge or the delay its status needs)."""
        self.stats.refused(reason, tenant, self._clock())
        challenge = None
        if status == 401:
            challenge = ALGORITHM_B if self.mode is AuthMode.SIGNED else b'Bearer realm="huselet"'
        # Throttled callers wait for their answer (the whole delay: a client that
        # retries at once must not turn the delay into a shorter retry loop).
        pause_s = self._throttle_delay_s if status == 429 else 0.0
        return Refusal(
            reason,
            message,
            status,
            retry_after_s=retry_after_s,
            challenge=challenge,
            pause_s=pause_s,
        )

    def admit(self, request: AdmissionRequest) -> Ticket:
        """A ticket for ``request``, or a :class:`Refusal` raised (see the module doc)."""
        peer = request.peer
        if self._sources.active and not self._sources.allows(peer):
            raise self.refuse(
                RefusalReason.SOURCE_DENIED, "requests from this address are not allowed", 403, None
            )
        mode = self.mode
        body_sha256 = None
        tenant: TenantSettings | None = None
        if mode is AuthMode.SIGNED:
            self._source_ready(peer)
            tenant, body_sha256 = self._verify(request)
            fn = self._functions(request.function)
            if not (fn is not None and fn.tenant == tenant.name) and not tenant.grants(
                request.function
            ):
                # Same answer whether or not the function exists: no probing
                # for other tenants' function names.
                raise self.refuse(
                    RefusalReason.FORBIDDEN_FUNCTION,
                    f"tenant {tenant.name} may not invoke {request.function}",
                    403,
                    tenant.name,
                )
        else:
            if mode is AuthMode.BEARER:
                self._source_ready(peer)
                self._check_bearer(request.authorization, peer)
            else:
                self._take_source(peer)
            fn = self._functions(request.function)
        return self._limit(request.function, fn, tenant, body_sha256)

    # --- sources ---------------------------------------------------------------------------

    def _source_ready(self, peer: str) -> None:
        """Refuse a source whose failures used up its bucket (checked before any crypto)."""
        buckets = self._source_buckets
        if buckets is not None:
            now = self._clock()
            bucket = buckets.get(peer, now)
            if not bucket.ready(now):
                raise self._source_throttled(bucket, now)

    def _take_source(self, peer: str) -> None:
        buckets = self._source_buckets
        if buckets is not None:
            now = self._clock()
            bucket = buckets.get(peer, now)
            if not bucket.ready(now):
                raise self._source_throttled(bucket, now)
            bucket.take(now)

    def _source_throttled(self, bucket: TokenBucket, now: float) -> Refusal:
        return self.refuse(
            RefusalReason.SOURCE_RATE,
            f"this address is over its rate of {bucket.rate:g} requests/s "
            "(unauthenticated or failed requests)",
            429,
            None,
            retry_after_s=retry_after(bucket.wait_s(now)),
        )

    def _auth_failed(
        self, reason: RefusalReason, message: str, peer: str, tenant: str | None = None
    ) -> Refusal:
        if self._source_buckets is not None:
            now = self._clock()
            bucket = self._source_buckets.get(peer, now)
            if bucket.ready(now):
                bucket.take(now)
        return self.refuse(reason, message, 401, tenant)

    # --- authentication ----------------------------------------------------------------------

    def _check_bearer(self, authorization: bytes | None, peer: str) -> None:
        token = self._token
        assert token is not None
        if authorization is None:
            raise self._auth_failed(RefusalReason.MISSING_AUTH, "missing bearer token", peer)
        scheme, _, credentials = authorization.partition(b" ")
        # compare_digest: the time taken must not reveal how much of the token matched.
        if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials.strip(), token):
            raise self._auth_failed(RefusalReason.BAD_TOKEN, "invalid bearer token", peer)

    def _verify(self, request: AdmissionRequest) -> tuple[TenantSettings, bytes]:
        """The tenant whose key signed ``request``, and the body digest it signed."""
        peer = request.peer
        authorization = request.authorization
        if authorization is None or not authorization.startswith(ALGORITHM_B + b" "):
            raise self._auth_failed(
                RefusalReason.MISSING_AUTH,
                "this node requires signed requests (Authorization: HUSELET-HMAC-SHA256 ...)",
                peer,
            )
        try:
            creds = parse_authorization(authorization)
        except SigningError as exc:
            raise self._auth_failed(RefusalReason.MALFORMED, str(exc), peer) from None
        entry = self.ring.keys.get(creds.key_id)
        tenant = None if entry is None else self.ring.tenants.get(entry.tenant)
        if entry is None or tenant is None:
            raise self._auth_failed(RefusalReason.UNKNOWN_KEY, "unknown access key", peer)
        now = self._wall()
        if not entry.valid_at(now):
            raise self._auth_failed(
                RefusalReason.KEY_NOT_VALID,
                "the access key is not valid now (not yet valid, or expired)",
                peer,
                tenant.name,
            )
        values = self._signed_values(creds.signed_headers, request.headers, peer, tenant.name)
        date = values[_DATE_HEADER_B]
        if date == self._last_date:  # most requests of a second share their timestamp
            at = self._last_at
        else:
            try:
                at = parse_timestamp(date)
            except SigningError as exc:
                raise self._auth_failed(
                    RefusalReason.MALFORMED, str(exc), peer, tenant.name
                ) from None
            self._last_date, self._last_at = date, at
        if abs(now - at) > self._skew_s:
            raise self._auth_failed(
                RefusalReason.STALE_TIMESTAMP,
                f"the request timestamp {date.decode('ascii')} is outside the allowed skew of "
                f"{self._skew_s:g} s from the node's clock ({format_timestamp(now)})",
                peer,
                tenant.name,
            )
        content = values[_CONTENT_HEADER_B]
        if _SHA256_HEX.fullmatch(content) is None:
            raise self._auth_failed(
                RefusalReason.MALFORMED,
                "X-Huselet-Content-Sha256 must be 64 lowercase hex digits",
                peer,
                tenant.name,
            )
        canonical = canonical_request(
            request.method,
            request.path,
            request.query,
            [(name, values[name]) for name in creds.signed_headers],
            content,
        )
        expected = signature(entry.secret, string_to_sign(date, canonical))
        if not hmac.compare_digest(expected, creds.signature):
            raise self._auth_failed(
                RefusalReason.BAD_SIGNATURE,
                "the signature does not match the request",
                peer,
                tenant.name,
            )
        try:
            replayed = self._replay.seen(creds.signature, at + self._skew_s + 1, now)
        except ReplayCacheFull:
            raise self.refuse(
                RefusalReason.REPLAY_CACHE_FULL,
                "too many signed requests in the skew window; retry shortly",
                503,
                tenant.name,
                retry_after_s=1,
            ) from None
        if replayed:
            raise self.refuse(
                RefusalReason.REPLAY,
                "this signature was already used; sign every request anew",
                401,
                tenant.name,
            )
        return tenant, content

    def _signed_values(
        self,
        signed: tuple[bytes, ...],
        headers: Iterable[tuple[bytes, bytes]],
        peer: str,
        tenant: str,
    ) -> dict[bytes, bytes]:
        wanted = _wanted(signed)
        if wanted is None:
            raise self._auth_failed(
                RefusalReason.MALFORMED,
                "SignedHeaders must include host, x-huselet-content-sha256 and x-huselet-date",
                peer,
                tenant,
            )
        values: dict[bytes, bytes] = {}
        has_content_type = False
        for name, value in headers:
            if name in wanted:
                if name in values:
                    raise self._auth_failed(
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
            raise self._auth_failed(
                RefusalReason.MALFORMED, "content-type must be a signed header", peer, tenant
            )
        if len(values) != len(signed):
            missing = next(name for name in signed if name not in values)
            raise self._auth_failed(
                RefusalReason.MALFORMED,
                f"signed header {missing.decode('ascii')} is not in the request",
                peer,
                tenant,
            )
        return values

    # --- limits -------------------------------------------------------------------------

    def _limit(
        self,
        function: str,
        fn: FunctionPolicy | None,
        tenant: TenantSettings | None,
        body_sha256: bytes | None,
    ) -> Ticket:
        now = self._clock()
        tenant_name = None if tenant is None else tenant.name
        tenant_limits = None if tenant is None else self._tenants.get(tenant.name)
        fn_limits = None
        if fn is not None and (fn.rate is not None or fn.max_concurrent is not None):
            fn_limits = self._function_limits.get(function)
            if fn_limits is None:
                fn_limits = self._function_limits[function] = _Limited()
            fn_limits.tune(fn.rate, fn.max_concurrent, now)
        elif function in self._function_limits:
            del self._function_limits[function]  # its limits were removed
        if tenant_limits is not None:
            self._check(tenant_limits, now, tenant_name, f"tenant {tenant_name}", _TENANT_LIMITS)
        if fn_limits is not None:
            self._check(fn_limits, now, tenant_name, f"function {function}", _FUNCTION_LIMITS)
        gates: list[Gate] = []
        for limits in (tenant_limits, fn_limits):
            if limits is not None:
                if limits.bucket is not None:
                    limits.bucket.take(now)
                limits.gate.in_flight += 1
                gates.append(limits.gate)
        self.stats.admitted(tenant_name, now)
        return Ticket(self, tenant_name, tuple(gates), body_sha256)

    def _check(
        self,
        limits: _Limited,
        now: float,
        tenant: str | None,
        what: str,
        reasons: tuple[RefusalReason, RefusalReason],
    ) -> None:
        bucket = limits.bucket
        if bucket is not None and not bucket.ready(now):
            raise self.refuse(
                reasons[0],
                f"{what} is over its rate of {bucket.rate:g} requests/s "
                f"(burst {bucket.burst:g}); limit {reasons[0].value}",
                429,
                tenant,
                retry_after_s=retry_after(bucket.wait_s(now)),
            )
        if not limits.gate.has_room():
            raise self.refuse(
                reasons[1],
                f"{what} has {limits.gate.limit} requests in flight, its limit; "
                f"limit {reasons[1].value}",
                429,
                tenant,
                retry_after_s=1,
            )

    # --- visibility -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Counters and per-tenant rates as plain data (``ctl status``, metrics)."""
        now = self._clock()
        in_flight = {name: lim.gate.in_flight for name, lim in self._tenants.items()}
        data = self.stats.snapshot(now, in_flight)
        data["mode"] = self.mode.value
        data["replay_cache"] = len(self._replay)
        data["sources_tracked"] = 0 if self._source_buckets is None else len(self._source_buckets)
        return data
