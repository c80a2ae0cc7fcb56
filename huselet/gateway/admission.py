"""Admission: the one place that decides whether a request may reach a function.

Transport-free: :meth:`Admission.admit` takes an :class:`AdmissionRequest`
(an HTTP request's head) and :meth:`Admission.admit_call` a
:class:`CallRequest` (a framed call); both return a :class:`Ticket` or raise a
typed :class:`Refusal` (401 / 403 / 429 / 503, with the
:class:`~huselet.tenants.stats.RefusalReason` it was refused for). The HTTP
ingress calls it after parsing a head and before reading the body, the framed
ingress for every call. Nothing here awaits or does I/O.

Checks, cheapest and least trusting first, each in its own module:

1. the source address against the CIDR allow/deny lists (403), and a source
   whose unauthenticated requests or failed authentications are over
   ``auth.source_rate_per_s`` (429): :mod:`huselet.gateway.source_guard`;
2. authentication by mode: *open* (none), *bearer* (the single-tenant token of
   ``gateway.auth_token_file``: :mod:`huselet.gateway.auth_bearer`) or *signed*
   (``auth.keys_file``, HUSELET-HMAC-SHA256: :mod:`huselet.gateway.auth_signed`):
   key known and valid now, the tenant not over its quota (429, checked before
   any hashing), timestamp within ``max_skew_s``, signature right (constant
   time), never seen before (replay cache) — each failure a 401;
3. the tenant may invoke the function: it owns it (``functions[].tenant``) or
   its keys-file entry grants it by name or prefix (403);
4. rate and concurrency of the tenant, then of the function (429 with
   ``Retry-After`` and the limit named in the reply): :mod:`huselet.gateway.quotas`.

The body is checked afterwards against the signed SHA-256
(:meth:`Ticket.check_body`): a tampered body is a 401 even though the head was
fine. A ticket holds concurrency slots until :meth:`Ticket.release`.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import Any

from huselet.config.auth import AuthSettings
from huselet.gateway.admission_throttle import Pacer
from huselet.gateway.admission_types import (
    AdmissionRequest,
    AuthMode,
    CallRequest,
    FunctionLookup,
    FunctionPolicy,
    Refusal,
    Refusals,
)
from huselet.gateway.auth_bearer import bearer_problem
from huselet.gateway.auth_signed import SignatureVerifier, sha256_hex
from huselet.gateway.quotas import Quotas
from huselet.gateway.source_guard import SourceGuard
from huselet.tenants.keys import KeyRing, TenantSettings
from huselet.tenants.limits import Gate
from huselet.tenants.stats import AdmissionStats, RefusalReason
from huselet.tenants.verify_cost import VerifyCost, clock_ns

# Re-exported: the ingresses and tests import the vocabulary from here.
__all__ = [
    "Admission",
    "AdmissionRequest",
    "AuthMode",
    "CallRequest",
    "FunctionLookup",
    "FunctionPolicy",
    "Refusal",
    "Ticket",
]


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
        if expected is None:
            return
        cost = self._admission.verify_cost.body
        if cost.due():  # one in SAMPLE_EVERY is timed (tenants.verify_cost)
            t0 = clock_ns()
            ok = hmac.compare_digest(sha256_hex(body), expected)
            cost.add(clock_ns() - t0)
        else:
            ok = hmac.compare_digest(sha256_hex(body), expected)
        if not ok:
            raise self._admission.refuse(
                RefusalReason.BODY_MISMATCH,
                "the body does not match the SHA-256 it was signed with",
                401,
                self.tenant,
            )

    def release(self) -> None:
        """Give back the concurrency slots (idempotent)."""
        for gate in self._gates:
            gate.in_flight -= 1
        self._gates = ()


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
        self._functions: FunctionLookup = functions or (lambda name: None)
        self._token = bearer_token
        self.stats = AdmissionStats()
        self.verify_cost = VerifyCost()  # signed mode's CPU, sampled (tenants.verify_cost)
        self._refusals = Refusals(self.stats, clock)
        # Counts the refusal and builds it: for the checks below and for tickets.
        self.refuse = self._refusals.refuse
        self._sources = SourceGuard(self._refusals, clock)
        self._quotas = Quotas(self._refusals, clock)
        # Node-wide pacing of repeated 429s, per limit (the ingresses' tarpit uses it).
        self.pacer = Pacer()
        self._signed = SignatureVerifier(
            settings,
            refusals=self._refusals,
            fail=self._auth_failed,
            check_tenant=self._quotas.check_tenant,
            wall_clock=wall_clock,
        )
        self.settings = settings
        self.mode = AuthMode.OPEN
        self.configure(settings)

    # --- configuration (start and reload) ----------------------------------------------

    def configure(self, settings: AuthSettings) -> None:
        """Apply ``[auth]`` (again): limits are re-tuned, never reset."""
        self.settings = settings
        if settings.keys_file is not None:
            self.mode = AuthMode.SIGNED
        elif self._token is not None:
            self.mode = AuthMode.BEARER
        else:
            self.mode = AuthMode.OPEN
        self._refusals.mode = self.mode
        self._refusals.throttle_delay_s = settings.throttle_delay_ms / 1000
        self._sources.configure(settings)
        self._signed.configure(settings)

    @property
    def ring(self) -> KeyRing:
        return self._signed.ring

    def set_keys(self, ring: KeyRing) -> None:
        """A new key ring; tenants that remain keep their buckets and in-flight counts."""
        self._signed.set_keys(ring)
        self._quotas.set_tenants(ring)

    # --- the decision --------------------------------------------------------------------

    def admit(self, request: AdmissionRequest) -> Ticket:
        """A ticket for an HTTP request, or a :class:`Refusal` raised (see the module doc)."""
        token = self._token
        bearer_ok = token is not None and bearer_problem(request.authorization, token) is None
        return self._admit(request, request.peer, bearer_ok, request.authorization)

    def admit_call(self, call: CallRequest) -> Ticket:
        """A ticket for a framed call, or a :class:`Refusal` raised.

        The same checks as :meth:`admit`; in bearer mode the token was checked
        once, in the connection's HELLO (``call.authenticated``). A call on the
        Unix socket (peer "") comes from the daemon's own user: no address list applies.
        """
        return self._admit(call, call.peer, call.authenticated, None)

    def _admit(
        self,
        request: AdmissionRequest | CallRequest,
        peer: str,
        bearer_ok: bool,
        authorization: bytes | None,
    ) -> Ticket:
        if peer or isinstance(request, AdmissionRequest):
            self._sources.check_allowed(peer)
        mode = self.mode
        if mode is AuthMode.SIGNED:
            self._sources.check_ready(peer)
            cost = self.verify_cost.signature
            if cost.due():  # one in SAMPLE_EVERY is timed (tenants.verify_cost)
                t0 = clock_ns()
                tenant, body_sha256 = self._verify(request)
                cost.add(clock_ns() - t0)
            else:
                tenant, body_sha256 = self._verify(request)
            return self._admit_tenant(request.function, tenant, body_sha256)
        if mode is AuthMode.BEARER:
            self._sources.check_ready(peer)
            if not bearer_ok:
                assert self._token is not None
                problem = bearer_problem(authorization, self._token) or (
                    RefusalReason.MISSING_AUTH,
                    "missing bearer token",
                )
                raise self._auth_failed(*problem, peer)
        else:
            self._sources.check_ready(peer, take=True)
        gates = self._quotas.take(request.function, self._functions(request.function), None)
        self.stats.admitted(None, self._clock())
        return Ticket(self, None, gates, None)

    def _verify(self, request: AdmissionRequest | CallRequest) -> tuple[TenantSettings, bytes]:
        if isinstance(request, AdmissionRequest):
            return self._signed.verify_http(request)
        return self._signed.verify_call(request)

    def _admit_tenant(self, function: str, tenant: TenantSettings, body_sha256: bytes) -> Ticket:
        fn = self._functions(function)
        if not (fn is not None and fn.tenant == tenant.name) and not tenant.grants(function):
            # Same answer whether or not the function exists: no probing
            # for other tenants' function names.
            raise self.refuse(
                RefusalReason.FORBIDDEN_FUNCTION,
                f"tenant {tenant.name} may not invoke {function}",
                403,
                tenant.name,
            )
        # The verifier checked the tenant's quota before the HMAC (and nothing awaited since).
        gates = self._quotas.take(function, fn, tenant.name, tenant_checked=True)
        self.stats.admitted(tenant.name, self._clock())
        return Ticket(self, tenant.name, gates, body_sha256)

    def _auth_failed(
        self, reason: RefusalReason, message: str, peer: str, tenant: str | None = None
    ) -> Refusal:
        self._sources.charge_failure(peer)
        return self.refuse(reason, message, 401, tenant)

    # --- visibility -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Counters and per-tenant rates as plain data (``ctl status``, metrics)."""
        now = self._clock()
        in_flight = {name: lim.gate.in_flight for name, lim in self._quotas.tenants.items()}
        data = self.stats.snapshot(now, in_flight)
        # Each tenant's share of the replay cache, against its bound (auth.replay_cache_mb).
        for name, (signatures, nbytes) in self._signed.replay.usage().items():
            row = data["tenants"].get(name)
            if row is not None:
                row["replay_cache"] = signatures
                row["replay_cache_bytes"] = nbytes
        data["replay_cache_max_bytes"] = self.settings.replay_cache_bytes
        data["mode"] = self.mode.value
        data["replay_cache"] = len(self._signed.replay)
        data["replay_cache_bytes"] = self._signed.replay.nbytes
        data["sources_tracked"] = len(self._sources)
        data["verify_cost"] = self.verify_cost.snapshot()
        return data
