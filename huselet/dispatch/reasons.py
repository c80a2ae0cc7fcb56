"""Why an instance stopped: a fixed set of reasons, not free text.

The pool, the metrics and the request story all branch on the reason an
instance was stopped (planned or a fault, retry or not, breaker or not), so
it is an enum; its value is the words that reach logs and ``huselet ctl``.
A reason may carry a detail (the link error), kept apart from the enum.
"""

from __future__ import annotations

from enum import StrEnum


class StopReason(StrEnum):
    # The node's decisions.
    IDLE = "idle"
    REAPED = "reaped"
    NODE_STOPPING = "node stopping"
    FUNCTION_RETIRED = "function retired"
    SERVED = "served"
    START_FAILED = "start failed"
    START_CANCELLED = "start cancelled"
    # Faults, and the node's answers to them.
    DEADLINE = "request deadline passed"
    LINK_CLOSED = "the instance closed its link"
    LINK_BROKE = "the link to the instance broke"
    PROTOCOL_BROKEN = "the instance broke the link protocol"
    EXITED = "the instance exited"
    FROZEN = "frozen by SIGSTOP or a tracer"
    MISSED_HEARTBEAT = "missed heartbeat"
    NOT_READING = "missed heartbeat (not reading its link)"
    INTERNAL_ERROR = "internal error"


# The node's decision, not a fault of the instance: the stop is graceful
# (SHUTDOWN first) and the breaker does not count it.
PLANNED_STOPS = frozenset(
    {
        StopReason.IDLE,
        StopReason.REAPED,
        StopReason.NODE_STOPPING,
        StopReason.FUNCTION_RETIRED,
        StopReason.SERVED,
        StopReason.START_FAILED,
        StopReason.START_CANCELLED,
    }
)
# Stops after which an idempotent request may not be retried (the pool is going away).
NO_RETRY_STOPS = frozenset({StopReason.NODE_STOPPING, StopReason.FUNCTION_RETIRED})
# Stops that mean the link failed (for the metrics' death causes).
LINK_FAULTS = frozenset({StopReason.LINK_BROKE, StopReason.PROTOCOL_BROKEN})


class StartFailure(StrEnum):
    """Why an instance could not start, decided where it failed.

    The values are the ``reason`` label of ``huselet_cold_start_failures``.
    """

    FETCH = "fetch"  # its code could not be fetched, installed or leased
    SANDBOX = "sandbox"  # the runtime could not start the sandbox
    TIMEOUT = "timeout"  # start_timeout_ms ran out (in whichever phase)
    IMPORT = "import"  # it connected, then failed before READY (its import raised)
    OOM = "oom"  # it ran out of memory before READY
    CRASH = "crash"  # it exited, or broke the link protocol, before it was ready
