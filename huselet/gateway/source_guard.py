"""Admission by source address: CIDR allow/deny lists and per-source rate limits.

The cheapest and least trusting checks, made before any credential is looked
at: a denied address gets 403; an address whose unauthenticated requests (open
mode) or failed authentications (bearer and signed modes) used up its bucket
(``auth.source_rate_per_s``) gets 429, before any crypto is spent on it.
"""

from __future__ import annotations

from collections.abc import Callable

from huselet.config.auth import AuthSettings
from huselet.gateway.admission_types import Refusal, Refusals
from huselet.tenants.limits import SourceBuckets, TokenBucket, retry_after
from huselet.tenants.sources import SourcePolicy, parse_networks, source_key
from huselet.tenants.stats import RefusalReason


class SourceGuard:
    def __init__(self, refusals: Refusals, clock: Callable[[], float]) -> None:
        self._refuse = refusals.refuse
        self._clock = clock
        self._policy = SourcePolicy((), ())
        self._buckets: SourceBuckets | None = None

    def configure(self, settings: AuthSettings) -> None:
        """Apply the lists and the rate (again); buckets are re-tuned, never reset."""
        self._policy = SourcePolicy(
            parse_networks(settings.allow_cidrs), parse_networks(settings.deny_cidrs)
        )
        if settings.source_rate is None:
            self._buckets = None
        elif self._buckets is None:
            self._buckets = SourceBuckets(settings.source_rate, settings.max_sources)
        else:
            self._buckets.retune(settings.source_rate, settings.max_sources, self._clock())

    def check_allowed(self, peer: str) -> None:
        """Refuse (403) an address the CIDR lists do not allow."""
        policy = self._policy
        if policy.active and not policy.allows(peer):
            raise self._refuse(
                RefusalReason.SOURCE_DENIED, "requests from this address are not allowed", 403, None
            )

    def check_ready(self, peer: str, *, take: bool = False) -> None:
        """Refuse (429) a source over its rate; ``take``: this request costs a token."""
        buckets = self._buckets
        if buckets is not None:
            now = self._clock()
            bucket = buckets.get(peer, now)
            if not bucket.ready(now):
                raise self._throttled(bucket, now, peer)
            if take:
                bucket.take(now)

    def charge_failure(self, peer: str) -> None:
        """A failed authentication from ``peer`` costs it a token (if it has one left)."""
        buckets = self._buckets
        if buckets is not None:
            now = self._clock()
            bucket = buckets.get(peer, now)
            if bucket.ready(now):
                bucket.take(now)

    def _throttled(self, bucket: TokenBucket, now: float, peer: str) -> Refusal:
        return self._refuse(
            RefusalReason.SOURCE_RATE,
            f"this address is over its rate of {bucket.rate:g} requests/s "
            "(unauthenticated or failed requests)",
            429,
            None,
            retry_after_s=retry_after(bucket.wait_s(now)),
            pace_key=f"source:{source_key(peer)}",
        )

    def __len__(self) -> int:
        return 0 if self._buckets is None else len(self._buckets)
