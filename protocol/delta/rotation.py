"""Choosing which scheduler address to dial next, and when.

Pure: randomness and time are injected. At construction the addresses are
shuffled (so a fleet of nodes does not stampede the first address in the
config); a failed address rotates to the end; the wait before the next dial is
exponential backoff with *full jitter* (uniform in ``[0, ceiling]``, AWS
architecture blog "Exponential Backoff And Jitter"), capped, and reset by a
success. The ceiling doubles per *round* of failures over all addresses, not
per failure: when one scheduler dies the node should try the next one almost
at once, and only back off once every address has failed.

The cap (``max_delay``) is also how late a node may notice that a scheduler
came back: after an outage of any length its next dial comes within the cap.
With one address, a 30 s cap meant a median 8-9 s (p99 27 s) between a
restarted scheduler and its nodes' return after a 10 s+ outage; 5 s gives a
median ~1.4 s (p99 4.5 s), and spreads 1,000 nodes' reconnects over 5 s
(~200 handshakes/s). Fleets of many thousands of nodes may want more.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


class SchedulerAddressRotation:
    """Ordered scheduler addresses plus the backoff state of the dialer."""

    __slots__ = ("_addresses", "_failures", "_retry_at", "base_delay", "max_delay", "rng")

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        rng: random.Random,
        base_delay: float = 0.1,
        max_delay: float = 5.0,
    ) -> None:
        unique = list(dict.fromkeys(addresses))
        if not unique:
            raise ValueError("at least one scheduler address is required")
        if not 0 < base_delay <= max_delay:
            raise ValueError("need 0 < base_delay <= max_delay")
        rng.shuffle(unique)
        self._addresses = unique
        self.rng = rng
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._failures = 0
        self._retry_at = float("-inf")

    @property
    def addresses(self) -> list[str]:
        """The current dial order (a copy)."""
        return list(self._addresses)

    @property
    def failures(self) -> int:
        """Consecutive failed attempts since the last success."""
        return self._failures

    @property
    def retry_at(self) -> float:
        """Time before which the next dial should not start."""
        return self._retry_at

    def current(self) -> str:
        """The address to dial next."""
        return self._addresses[0]

    def ceiling(self) -> float:
        """Upper bound of the wait that the next failure will produce."""
        return self._ceiling(self._failures + 1)

    def _ceiling(self, failures: int) -> float:
        # failures 1..n share the base ceiling, n+1..2n twice it, and so on
        rounds = min((failures - 1) // len(self._addresses), 62)  # 2**62 s is capped anyway
        return min(self.max_delay, self.base_delay * (1 << rounds))

    def failed(self, address: str, now: float, *, cap: float | None = None) -> float:
        """Record a failed dial of (or lost link to) ``address``; returns when to retry.

        ``cap`` bounds this wait below ``max_delay``: a standby that answered
        ``not_leader`` proves a scheduler is alive and a leader is due within
        its lease TTL, so waiting the full exponential backoff would only delay
        the node's failover.
        """
        if address in self._addresses:
            self._addresses.remove(address)
            self._addresses.append(address)
        self._failures += 1
        ceiling = self._ceiling(self._failures)
        if cap is not None:
            ceiling = min(ceiling, max(cap, self.base_delay))
        self._retry_at = now + self.rng.uniform(0.0, ceiling)
        return self._retry_at

    def succeeded(self, address: str) -> None:
        """A handshake with ``address`` completed: keep it first and forget the backoff."""
        if address in self._addresses and self._addresses[0] != address:
            self._addresses.remove(address)
            self._addresses.insert(0, address)
        self._failures = 0
        self._retry_at = float("-inf")

    def prefer(self, address: str) -> bool:
        """Dial ``address`` next (a standby named it as the leader); False if not configured."""
        if address not in self._addresses:
            return False
        self._addresses.remove(address)
        self._addresses.insert(0, address)
        return True
