"""What the admission path counts: refusals by reason and tenant, per-tenant rates.

Plain dicts of ints and floats (no metrics library), so ``ctl status`` and a
metrics exporter can read them as they are: :meth:`AdmissionStats.snapshot`.
"""

from __future__ import annotations

import enum
from typing import Any

# The tenant label of requests that are not (yet) attributed to a tenant.
NO_TENANT = "-"
RATE_WINDOW_S = 5.0


class RefusalReason(enum.StrEnum):
    """Why admission refused a request; stable names (they label counters)."""

    SOURCE_DENIED = "source_denied"  # 403: peer address not allowed
    SOURCE_RATE = "source_rate"  # 429: unauthenticated traffic of one source over its rate
    MISSING_AUTH = "missing_auth"  # 401: no (usable) Authorization header
    BAD_TOKEN = "bad_token"  # 401: wrong bearer token
    MALFORMED = "malformed_signature"  # 401: malformed signature fields
    UNKNOWN_KEY = "unknown_key"  # 401
    KEY_NOT_VALID = "key_not_valid"  # 401: outside not_before / expires
    BAD_SIGNATURE = "bad_signature"  # 401
    STALE_TIMESTAMP = "stale_timestamp"  # 401: outside the skew window
    REPLAY = "replay"  # 401: signature already used
    BODY_MISMATCH = "body_mismatch"  # 401: body does not hash to the signed digest
    FORBIDDEN_FUNCTION = "forbidden_function"  # 403: tenant may not invoke it
    TENANT_RATE = "tenant_rate"  # 429
    TENANT_CONCURRENCY = "tenant_concurrency"  # 429
    FUNCTION_RATE = "function_rate"  # 429
    FUNCTION_CONCURRENCY = "function_concurrency"  # 429
    REPLAY_CACHE_FULL = "replay_cache_full"  # 503


THROTTLES = frozenset(
    {
        RefusalReason.SOURCE_RATE,
        RefusalReason.TENANT_RATE,
        RefusalReason.TENANT_CONCURRENCY,
        RefusalReason.FUNCTION_RATE,
        RefusalReason.FUNCTION_CONCURRENCY,
    }
)


class RateMeter:
    """Requests per second over the last one to two windows (cheap: two counters)."""

    __slots__ = ("_current", "_previous", "_start")

    def __init__(self, now: float) -> None:
        self._start = now
        self._current = 0
        self._previous = 0

    def _roll(self, now: float) -> None:
        elapsed = now - self._start
        if elapsed >= RATE_WINDOW_S:
            # A gap of two windows or more means the previous one was empty.
            self._previous = self._current if elapsed < 2 * RATE_WINDOW_S else 0
            self._current = 0
            self._start = now - (elapsed % RATE_WINDOW_S)

    def add(self, now: float) -> None:
        self._roll(now)
        self._current += 1

    def rate(self, now: float) -> float:
        self._roll(now)
        span = RATE_WINDOW_S + (now - self._start)
        return (self._previous + self._current) / span if span > 0 else 0.0


class TenantCounters:
    __slots__ = ("admitted", "meter", "refused", "throttle_meter", "throttled")

    def __init__(self, now: float) -> None:
        self.admitted = 0
        self.throttled = 0
        self.refused = 0  # 401/403 after the tenant was known
        self.meter = RateMeter(now)
        self.throttle_meter = RateMeter(now)


class AdmissionStats:
    def __init__(self) -> None:
        # reason -> tenant -> count; what an exporter turns into a labelled counter.
        self.refusals: dict[str, dict[str, int]] = {}
        self.tenants: dict[str, TenantCounters] = {}
        self.admitted_total = 0

    def _tenant(self, tenant: str, now: float) -> TenantCounters:
        counters = self.tenants.get(tenant)
        if counters is None:
            counters = self.tenants[tenant] = TenantCounters(now)
        return counters

    def admitted(self, tenant: str | None, now: float) -> None:
        self.admitted_total += 1
        if tenant is not None:
            counters = self._tenant(tenant, now)
            counters.admitted += 1
            counters.meter.add(now)

    def refused(self, reason: RefusalReason, tenant: str | None, now: float) -> None:
        label = tenant or NO_TENANT
        by_tenant = self.refusals.setdefault(reason.value, {})
        by_tenant[label] = by_tenant.get(label, 0) + 1
        if tenant is not None:
            counters = self._tenant(tenant, now)
            if reason in THROTTLES:
                counters.throttled += 1
                counters.throttle_meter.add(now)
            else:
                counters.refused += 1

    def snapshot(self, now: float, in_flight: dict[str, int] | None = None) -> dict[str, Any]:
        """Plain data: totals, refusals by reason and tenant, one row per tenant."""
        in_flight = in_flight or {}
        return {
            "admitted": self.admitted_total,
            "refusals": {reason: dict(by) for reason, by in sorted(self.refusals.items())},
            "tenants": {
                name: {
                    "admitted": c.admitted,
                    "throttled": c.throttled,
                    "refused": c.refused,
                    "rate_per_s": round(c.meter.rate(now), 3),
                    "throttled_per_s": round(c.throttle_meter.rate(now), 3),
                    "in_flight": in_flight.get(name, 0),
                }
                for name, c in sorted(self.tenants.items())
            },
        }
