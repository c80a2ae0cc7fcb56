"""Quotas: rate and concurrency limits of tenants and functions, node-wide.

One :class:`Limited` (token bucket + concurrency gate) per tenant and per
function with limits, shared by every connection and both ingresses. Reloads
re-tune them in place, so neither a reload nor a new keys file resets a bucket.
"""

from __future__ import annotations

from collections.abc import Callable

from huselet.config.auth import RateLimit
from huselet.gateway.admission_types import FunctionPolicy, Refusals
from huselet.tenants.keys import KeyRing
from huselet.tenants.limits import Gate, TokenBucket, retry_after
from huselet.tenants.stats import RefusalReason

_TENANT_LIMITS = (RefusalReason.TENANT_RATE, RefusalReason.TENANT_CONCURRENCY)
_FUNCTION_LIMITS = (RefusalReason.FUNCTION_RATE, RefusalReason.FUNCTION_CONCURRENCY)


class Limited:
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


class Quotas:
    def __init__(self, refusals: Refusals, clock: Callable[[], float]) -> None:
        self._refuse = refusals.refuse
        self._clock = clock
        self.tenants: dict[str, Limited] = {}
        self._functions: dict[str, Limited] = {}

    def set_tenants(self, ring: KeyRing) -> None:
        """Tenants that remain keep their buckets and in-flight counts."""
        now = self._clock()
        for name in list(self.tenants):
            if name not in ring.tenants and not self.tenants[name].gate.in_flight:
                del self.tenants[name]
        for tenant in ring.tenants.values():
            self.tenants.setdefault(tenant.name, Limited()).tune(
                tenant.rate, tenant.max_concurrent, now
            )

    def check_tenant(self, tenant: str) -> None:
        """Refuse (429) a tenant over its rate or concurrency, taking nothing.

        Checked before its signature is verified: a throttled tenant's
        requests are refused without spending the HMAC on them.
        """
        limits = self.tenants.get(tenant)
        if limits is not None:
            self._check(limits, self._clock(), tenant, "tenant", tenant, _TENANT_LIMITS)

    def take(
        self,
        function: str,
        fn: FunctionPolicy | None,
        tenant: str | None,
        *,
        tenant_checked: bool = False,
    ) -> tuple[Gate, ...]:
        """Check and take the tenant's and the function's limits; the gates now held.

        ``tenant_checked``: :meth:`check_tenant` passed for this request with
        nothing awaited since (signed mode checks it before the HMAC), so the
        tenant's limits are taken without being checked a second time: its
        bucket only fills as time goes on and its gate only empties.
        """
        now = self._clock()
        tenant_limits = None if tenant is None else self.tenants.get(tenant)
        fn_limits = None
        if fn is not None and (fn.rate is not None or fn.max_concurrent is not None):
            fn_limits = self._functions.get(function)
            if fn_limits is None:
                fn_limits = self._functions[function] = Limited()
            fn_limits.tune(fn.rate, fn.max_concurrent, now)
        elif function in self._functions:
            del self._functions[function]  # its limits were removed
        if tenant_limits is not None and not tenant_checked:
            self._check(tenant_limits, now, tenant, "tenant", tenant, _TENANT_LIMITS)
        if fn_limits is not None:
            self._check(fn_limits, now, tenant, "function", function, _FUNCTION_LIMITS)
        gates: list[Gate] = []
        for limits in (tenant_limits, fn_limits):
            if limits is not None:
                if limits.bucket is not None:
                    limits.bucket.take(now)
                limits.gate.in_flight += 1
                gates.append(limits.gate)
        return tuple(gates)

    def _check(
        self,
        limits: Limited,
        now: float,
        tenant: str | None,
        kind: str,
        name: str | None,
        reasons: tuple[RefusalReason, RefusalReason],
    ) -> None:
        # The messages are built only for a refusal (and are the same for every
        # refusal of one limit, so the reply body is rendered once: responses.py).
        bucket = limits.bucket
        if bucket is not None and not bucket.ready(now):
            raise self._refuse(
                reasons[0],
                f"{kind} {name} is over its rate of {bucket.rate:g} requests/s "
                f"(burst {bucket.burst:g}); limit {reasons[0].value}",
                429,
                tenant,
                retry_after_s=retry_after(bucket.wait_s(now)),
                pace_key=f"{kind}:{name}",
            )
        if not limits.gate.has_room():
            raise self._refuse(
                reasons[1],
                f"{kind} {name} has {limits.gate.limit} requests in flight, its limit; "
                f"limit {reasons[1].value}",
                429,
                tenant,
                retry_after_s=1,
                pace_key=f"{kind}:{name}",
            )
