"""Every counter a function's pool keeps, declared once.

The pool, its lifecycle, serving and heartbeat modules count into
``FunctionPool.counters``; status (``huselet ctl status``), ``huselet ctl
top``, the health loops and the ``huselet_pool_events`` metric read them back.
A :class:`PoolCounter` member *is* its string (a StrEnum), so status JSON and
metric label values are the words they always were.
"""

from __future__ import annotations

from enum import StrEnum


class PoolCounter(StrEnum):
    # Admission: every request offered to the pool is accepted or rejected.
    ACCEPTED = "accepted"
    REJECTED_BREAKER_OPEN = "rejected_breaker_open"
    REJECTED_STARTS_HELD = "rejected_starts_held"
    REJECTED_QUEUE_FULL = "rejected_queue_full"
    REJECTED_HOST_LIMIT = "rejected_host_limit"  # no instance alive and starts held
    # Outcomes of accepted requests.
    OK = "ok"
    HANDLER_ERRORS = "handler_errors"
    BAD_EVENTS = "bad_events"
    DEADLINE_EXCEEDED = "deadline_exceeded"  # the caller's deadline passed
    DEADLINE_CANCELLED = "deadline_cancelled"  # the worker gave up at the deadline
    INSTANCE_LOST = "instance_lost"  # a request failed because its instance ended
    FAILED_START = "failed_start"  # a queued request failed because no instance started
    FAILED_HOST_LIMIT = "failed_host_limit"  # queued, none alive, the host refused starts
    # Deliveries to instances.
    LINK_ERRORS = "link_errors"
    REQUEUED_UNDELIVERED = "requeued_undelivered"
    RETRIED = "retried"  # idempotent request retried on a fresh instance
    # Instances.
    INSTANCES_STARTED = "instances_started"  # every start is a cold start
    START_FAILURES = "start_failures"
    START_RETRIES = "start_retries"  # a timed-out start retried for the queue (startretry)
    START_REFUSED_HOST_LIMIT = "start_refused_host_limit"  # not counted against the breaker
    INSTANCES_LOST = "instances_lost"
    INSTANCES_REAPED = "instances_reaped"
    UNREAPED_INSTANCES = "unreaped_instances"
    DEADLINE_KILLS = "deadline_kills"
    HEARTBEAT_MISSED = "heartbeat_missed"
    HEARTBEAT_PINGS = "heartbeat_pings"
    HEARTBEAT_KERNEL_WATCHED = "heartbeat_kernel_watched"  # idle, watched through SIGCHLD
    STOPPED_BUSY = "stopped_busy"
    # The circuit breaker.
    STALE_FAILURES = "stale_failures"
    BREAKER_OPENED = "breaker_opened"


# Every counter that marks an accepted request answered with an error.
FAILED_REQUESTS = (
    PoolCounter.HANDLER_ERRORS,
    PoolCounter.BAD_EVENTS,
    PoolCounter.DEADLINE_EXCEEDED,
    PoolCounter.INSTANCE_LOST,
    PoolCounter.FAILED_START,
    PoolCounter.FAILED_HOST_LIMIT,
)
