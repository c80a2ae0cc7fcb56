"""One accepted invocation: the unit that travels from ingress to an instance and back.

An invocation completes exactly once — with a result or a typed error — and the
first completion wins. That single rule is what keeps a request from being
answered twice or silently dropped when deadlines, instance deaths and drains
race each other.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, Protocol, TypedDict

import trio

from huselet.dispatch.reasons import StopReason
from huselet.errors import HuseletError

if TYPE_CHECKING:
    from huselet.observe.context import RequestMeta
    from protocol.link import HttpRequest


class InvokeResult(NamedTuple):
    """A function's answer. A named tuple, not a frozen dataclass: as immutable,
    and made in a third of the time (one per request, in the link reader)."""

    body: bytes
    content_type: str
    # What an HTTP function chose (status, headers); 200 and none otherwise.
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()


class QueueSlot(Protocol):
    """The queue an invocation waits in (a :class:`~huselet.dispatch.buffer.RequestBuffer`).

    A Protocol, not an import: the buffer and the instance hold invocations,
    so this module names only what it uses of them and imports neither.
    """

    def left_queue(self, inv: Invocation) -> None: ...


class ServingInstance(Protocol):
    """The instance an invocation was delivered to, as the pool and request logs read it.

    (A :class:`~huselet.dispatch.instance.InstanceRecord`.)
    """

    @property
    def id(self) -> str: ...

    @property
    def inflight(self) -> dict[str, Invocation]: ...

    @property
    def stop_reason(self) -> StopReason | None: ...

    @property
    def created_at(self) -> float: ...

    @property
    def ready_at(self) -> float | None: ...

    def stop(self, reason: StopReason, detail: object = None) -> None: ...


class InvokeOptions(TypedDict, total=False):
    """The optional keywords of an invoke (the dispatcher's and the front ends' view of it).

    ``timeout_ms`` may shorten the function's deadline, never lengthen it;
    ``request_id`` is the caller's (a fresh one when absent); ``http`` the
    request of a function that takes HTTP events; ``meta`` brings the caller's
    trace context in and takes the timings back out.
    """

    timeout_ms: int | None
    request_id: str | None
    http: HttpRequest | None
    meta: RequestMeta | None


class InvocationState(enum.Enum):
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    DONE = "done"


class Invocation:
    __slots__ = (
        "_done",
        "_outcome",
        "attempts",
        "deadline",
        "dispatched_at",
        "enqueued_at",
        "event",
        "function",
        "http",
        "instance",
        "kind",
        "link_seq",
        "meta",
        "on_done",
        "pool",
        "queued_in",
        "request_id",
        "state",
        "trace",
    )

    def __init__(
        self,
        request_id: str,
        function: str,
        event: bytes,
        kind: str,
        deadline: float,
        http: HttpRequest | None = None,
        now: float | None = None,
    ) -> None:
        self.request_id = request_id
        self.http = http  # the HTTP request, for functions that take HTTP events
        self.function = function
        self.event = event
        self.kind = kind
        self.deadline = deadline  # trio.current_time() clock
        # ``now``: the caller's clock reading, if it has one (it took one for the deadline).
        self.enqueued_at = trio.current_time() if now is None else now
        self.state = InvocationState.QUEUED
        # The buffer holding this invocation while it is QUEUED there: a completion
        # from outside (deadline, drain) tells it, so its live count stays exact.
        self.queued_in: QueueSlot | None = None
        self.instance: ServingInstance | None = None
        self.link_seq = 0  # its place in the order requests were sent to its instance
        self.attempts = 1  # deliveries to an instance so far, counting a retry
        self.dispatched_at: float | None = None  # last taken off the queue (timings)
        self.trace = ""  # W3C traceparent passed on to the handler ("" if none)
        self._outcome: InvokeResult | HuseletError | None = None
        # Made by the first wait(): a call served without a task (on_done) never waits.
        self._done: trio.Event | None = None
        # Called (once, inside complete()) for a caller that waits without a task.
        # It must not block nor raise: complete() runs in the middle of other
        # work (a result being read, the deadline timer's sweep, a teardown).
        self.on_done: Callable[[Invocation], None] | None = None
        self.pool: object = None  # the pool it was submitted to (the dispatcher's)
        self.meta: RequestMeta | None = None  # the caller's trace context and timings

    @property
    def done(self) -> bool:
        return self.state is InvocationState.DONE

    def complete(self, outcome: InvokeResult | HuseletError) -> bool:
        """Record the outcome; return False (and change nothing) if already done."""
        if self.state is InvocationState.DONE:
            return False
        if self.queued_in is not None:
            self.queued_in.left_queue(self)
        self.state = InvocationState.DONE
        self._outcome = outcome
        if self._done is not None:
            self._done.set()
        if self.on_done is not None:
            self.on_done(self)
        return True

    @property
    def outcome(self) -> InvokeResult | HuseletError | None:
        return self._outcome

    async def wait(self) -> None:
        if self.state is InvocationState.DONE:
            await trio.lowlevel.checkpoint()  # as Event.wait() of a set event
            return
        if self._done is None:
            self._done = trio.Event()
        await self._done.wait()

    def result(self) -> InvokeResult:
        """The outcome of a done invocation: the result, or its error raised."""
        outcome = self._outcome
        if isinstance(outcome, HuseletError):
            raise outcome
        assert outcome is not None, "result() of an invocation that is not done"
        return outcome
