"""The vocabulary of admission: its modes, what it is asked, and how it says no.

Shared by :mod:`huselet.gateway.admission` (the decision) and the checks it
composes (:mod:`~huselet.gateway.source_guard`, :mod:`~huselet.gateway.auth_bearer`,
:mod:`~huselet.gateway.auth_signed`, :mod:`~huselet.gateway.quotas`), so none
of them imports another's internals.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from huselet.client.signing import ALGORITHM_B
from huselet.config.auth import RateLimit
from huselet.errors import HuseletError
from huselet.tenants.stats import AdmissionStats, RefusalReason
from protocol.ingress_signing import CallAuth

_CODES = {401: "unauthorized", 403: "forbidden", 429: "rate_limited", 503: "unavailable"}


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
        pace_key: str | None = None,
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
        # The limit a 429 is for ("tenant:acme", "source:10.0.0.1"…): the node-wide
        # pacing of repeated 429s (admission_throttle.Pacer) is per limit.
        self.pace_key = pace_key


class Refusals:
    """Counts each refusal and builds it, with the challenge or the delay its status needs."""

    def __init__(self, stats: AdmissionStats, clock: Callable[[], float]) -> None:
        self.stats = stats
        self._clock = clock
        self.mode = AuthMode.OPEN  # set by Admission.configure
        self.throttle_delay_s = 0.0

    def refuse(
        self,
        reason: RefusalReason,
        message: str,
        status: int,
        tenant: str | None,
        *,
        retry_after_s: int | None = None,
        pace_key: str | None = None,
    ) -> Refusal:
        self.stats.refused(reason, tenant, self._clock())
        challenge = None
        if status == 401:
            challenge = ALGORITHM_B if self.mode is AuthMode.SIGNED else b'Bearer realm="huselet"'
        # Throttled callers wait for their answer (the whole delay: a client that
        # retries at once must not turn the delay into a shorter retry loop).
        pause_s = self.throttle_delay_s if status == 429 else 0.0
        return Refusal(
            reason,
            message,
            status,
            retry_after_s=retry_after_s,
            challenge=challenge,
            pause_s=pause_s,
            pace_key=pace_key,
        )


class AuthFailer(Protocol):
    """Builds the 401 of a failed authentication and charges the source for it."""

    def __call__(
        self, reason: RefusalReason, message: str, peer: str, tenant: str | None = None
    ) -> Refusal: ...


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
    """An HTTP request, as far as admission reads it (its head; never its body)."""

    method: bytes
    path: bytes  # without the query
    query: bytes  # after "?", raw
    headers: Iterable[tuple[bytes, bytes]]  # lowercase names, as received
    authorization: bytes | None
    peer: str  # source IP address ("" when unknown)
    function: str


@dataclass(slots=True)
class CallRequest:
    """A framed call, as far as admission reads it (see protocol/ingress_signing.py)."""

    function: str
    kind: str
    timeout_ms: int | None
    auth: CallAuth | None
    peer: str  # source IP address; "" for the Unix socket (the daemon's own user)
    # The connection presented the bearer token in its HELLO (bearer mode).
    authenticated: bool = False
