"""Tarpit for throttled connections: hold each 429 longer the more come in a row, then close.

A tenant over its rate is refused before its signature is checked, so one
refusal costs the node little CPU of its own; what it does cost is a trip
round the event loop (a wake-up, a read, a write) per refused request, and
that is what a flooding tenant takes from the others. So the ingress answers
a throttled request only after a hold (``auth.throttle_delay_ms``), doubled
for each further 429 in a row on the same connection (up to
:data:`MAX_HOLD_FACTOR` times the delay), and closes the connection after
:data:`CLOSE_AFTER` of them: a client that honours ``Retry-After`` never gets
there, a client that retries at once (or pipelines) gets ever fewer answers,
and the requests it has queued meanwhile stay unread in the kernel.

Each hold is stretched by a random part of up to :data:`JITTER` of itself:
connections that were throttled together (a flood opens them at once) would
otherwise be answered together, a burst of work in one pass of the loop that
another tenant's request arriving then has to wait behind.

"In a row" means within :data:`RESET_AFTER_S` of the previous 429 on that
connection: a request admitted in between does not start the count again (a
flooding tenant still gets its rate's worth of requests through, on the same
connections), a connection without a 429 for that long does.

Per connection, that still lets a flood spread over many connections get an
answer per connection: 32 connections were answered ~25 times a second (a
256-connection flood, ``max_connections_per_source``, would be answered ~250
times), each answer a trip round the loop that another tenant's request may
wait behind. So :class:`Pacer`, node-wide, answers the *repeated* 429s of one
limit (a tenant's, a function's, a source's: :attr:`Refusal.pace_key`) at
most :data:`PACE_PER_S` a second all together, each no earlier than its own
connection's hold and no later than that plus the longest hold
(``MAX_HOLD_FACTOR`` times the delay: a held connection is one of
``gateway.max_connections``, so a flood of many connections must not keep
them for long; those answers beyond the pace take no slot of it). So the
pace bounds the answers of a flood over up to ~``PACE_PER_S`` x that cap
connections (20 with the defaults; 32 connections were answered half as
often); beyond that, the rest are answered at their cap, as often as
before, only later. A connection's first 429 is never paced: a client that
honours ``Retry-After`` gets its answer after the plain hold, however many
other clients the limit is refusing.

Sans-IO: the ingress calls :meth:`Pacer.throttled` (with the connection's
:class:`Strikes`) when it refuses a request as throttled.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Protocol

# A hold is stretched by up to this fraction of itself, at random (desynchronises floods).
JITTER = 0.5
# The hold doubles per consecutive 429 on one connection, up to this many times the delay.
MAX_HOLD_FACTOR = 16
# After this many consecutive 429s the connection is closed (Connection: close).
CLOSE_AFTER = 8
# A 429 this long after the previous one on the connection counts as the first again.
RESET_AFTER_S = 10.0
# Repeated 429s of one limit, node-wide, are answered at most this many times a second.
PACE_PER_S = 5.0
# Limits the pacer remembers; beyond it, those whose last answer is past are forgotten.
PACE_KEYS = 4096
# A connection held recently (Strikes.recent) reads at most this much at a time: the
# rest of what a flooding client pipelined stays in the kernel, where it costs no
# parsing and no Python objects (the HTTP ingress reads heads this way anyway).
HELD_RECEIVE_BYTES = 8 * 1024


class Strikes:
    """Consecutive throttled replies on one connection."""

    __slots__ = ("_random", "count", "last")

    def __init__(self, rng: Callable[[], float] = random.random) -> None:
        self._random = rng  # in [0, 1): how much of JITTER a hold gets
        self.count = 0
        self.last = -math.inf  # when the previous 429 was decided

    def throttled(self, delay_s: float, now: float) -> tuple[float, bool]:
        """Another 429 (base hold ``delay_s``): when to answer it, and whether to close after.

        The answer is due at ``now`` plus the escalated hold (and its jitter);
        ``delay_s`` 0 holds nothing (and still counts towards closing).
        """
        if now - self.last > RESET_AFTER_S:
            self.count = 0
        self.last = now
        self.count += 1
        close = self.count >= CLOSE_AFTER
        if delay_s <= 0:
            return now, close
        hold = delay_s * min(MAX_HOLD_FACTOR, 1 << min(self.count - 1, 30))
        return now + hold * (1 + JITTER * self._random()), close

    def recent(self, now: float) -> bool:
        """Whether the connection had a 429 within :data:`RESET_AFTER_S` (it is being held).

        Such a connection is checked for a client that has gone before its next
        request is admitted, and reads little at a time (see the ingresses).
        """
        return now - self.last <= RESET_AFTER_S


class Throttled(Protocol):
    """What the pacer reads of a 429 (a :class:`~huselet.gateway.admission.Refusal`)."""

    @property
    def pause_s(self) -> float: ...
    @property
    def pace_key(self) -> str | None: ...


class Pacer:
    """Node-wide: when each limit's next repeated 429 may be answered (see the module doc)."""

    __slots__ = ("_gap", "_next")

    def __init__(self, per_s: float = PACE_PER_S) -> None:
        self._gap = 1.0 / per_s
        self._next: dict[str, float] = {}  # limit -> the earliest its next answer may go

    def throttled(self, strikes: Strikes, refusal: Throttled, now: float) -> tuple[float, bool]:
        """Another 429 on the connection of ``strikes``: when to answer it, whether to close.

        The connection's own hold (:meth:`Strikes.throttled`), pushed later when
        it is a repeat and other connections' answers for the same limit are due
        first. No hold (``pause_s`` 0), no pacing.
        """
        due, close = strikes.throttled(refusal.pause_s, now)
        key = refusal.pace_key
        if key is None or due <= now or strikes.count < 2:
            return due, close
        slots = self._next
        at = slots.get(key, due)
        if at < due:
            at = due
        # Never more than the longest hold on top of the connection's own: held
        # connections are slots of gateway.max_connections, and a flood over many
        # connections must not keep them for minutes. Such an answer takes no pace slot.
        latest = due + refusal.pause_s * MAX_HOLD_FACTOR
        if at > latest:
            return latest, close
        if len(slots) >= PACE_KEYS and key not in slots:
            self._forget(now)
        slots[key] = at + self._gap
        return at, close

    def _forget(self, now: float) -> None:
        stale = [k for k, at in self._next.items() if at <= now]
        for k in stale:
            del self._next[k]
        if len(self._next) >= PACE_KEYS:
            self._next.clear()  # all busy: a bound beats exact pacing of that many limits

    def __len__(self) -> int:
        return len(self._next)
