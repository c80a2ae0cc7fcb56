"""What signature verification costs the daemon, measured where it runs.

The daemon's CPU per request with ``[auth]`` on minus off is noisy on a shared
machine (two large numbers, each drifting with other load). This accounts the
verification directly: on every :data:`SAMPLE_EVERY`-th signed request the
step is bracketed by :func:`time.thread_time_ns` (the thread's own CPU time:
time the thread is descheduled is not counted, host-side stalls charged to it
are). Sampling keeps the clock's own cost (``clock_gettime`` of a thread CPU
clock is a system call, not a vDSO read) off most requests.

Steps (:class:`VerifyStep`): ``signature`` is the head's verification (shape,
key, timestamp, canonical form, HMAC, replay cache); ``body`` is the body's
SHA-256 against the signed digest. A sample's nanoseconds include one clock
read (about half of two back-to-back reads; ``bench_auth`` prints that).
Exported as ``huselet_auth_verify_seconds{step}`` and
``huselet_auth_verify_samples{step}``: their ratio is the mean CPU per request.
"""

from __future__ import annotations

import enum
import time
from typing import Any

# Every how many signed requests one is timed (a power of two: a mask test).
SAMPLE_EVERY = 16
_MASK = SAMPLE_EVERY - 1
clock_ns = time.thread_time_ns


class VerifyStep(enum.StrEnum):
    SIGNATURE = "signature"
    BODY = "body"


class StepCost:
    """Requests seen, and the CPU nanoseconds of the sampled ones, for one step."""

    __slots__ = ("ns", "samples", "seen")

    def __init__(self) -> None:
        self.seen = 0
        self.samples = 0
        self.ns = 0

    def due(self) -> bool:
        """Count a request; True when this one is to be timed."""
        seen = self.seen
        self.seen = seen + 1
        return not seen & _MASK

    def add(self, ns: int) -> None:
        self.samples += 1
        self.ns += ns

    def snapshot(self) -> dict[str, Any]:
        return {"requests": self.seen, "samples": self.samples, "cpu_ns": self.ns}


class VerifyCost:
    """One :class:`StepCost` per :class:`VerifyStep` (the admission owns one)."""

    __slots__ = ("body", "signature")

    def __init__(self) -> None:
        self.signature = StepCost()
        self.body = StepCost()

    def snapshot(self) -> dict[str, Any]:
        return {
            "sample_every": SAMPLE_EVERY,
            VerifyStep.SIGNATURE.value: self.signature.snapshot(),
            VerifyStep.BODY.value: self.body.snapshot(),
        }
