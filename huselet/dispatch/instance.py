"""One instance as the pool sees it: its state, its link, its code lease.

:class:`InstanceRecord` is the pool's bookkeeping for one sandbox — what it is
doing, what it has in flight, when it was last heard from — and
:class:`CodeProvider` is where an instance's code comes from. The lifecycle
that moves a record between states lives in :mod:`huselet.dispatch.lifecycle`
and :mod:`huselet.dispatch.serving`.
"""

from __future__ import annotations

import enum
import math
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import trio

from huselet.config import FunctionSettings
from huselet.dispatch.invocation import Invocation
from huselet.dispatch.links import InstanceLink
from huselet.dispatch.reasons import StopReason
from huselet.runtime.base import ExitStatus, InstanceHandle


class InstanceState(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"


class InstanceRecord:
    """What the pool knows about one instance."""

    def __init__(
        self,
        function: str,
        on_state: Callable[[InstanceRecord], None] | None = None,
        on_starting: Callable[[bool], None] | None = None,
        on_stop: Callable[[InstanceRecord, bool], None] | None = None,
    ) -> None:
        self.id = f"{function}-{secrets.token_hex(4)}"
        self.token = secrets.token_urlsafe(24)
        self.token_spent = False  # single use: set when a link claims it
        self._state = InstanceState.STARTING
        self._on_state = on_state
        # Told when `starting` flips, so the pool counts starts under way without
        # walking its instances on every request. A record begins starting.
        self._on_starting = on_starting
        # Told when it is first asked to stop (a stop reason set) or no longer is:
        # the pool counts the instances meant to run without walking them.
        self._on_stop = on_stop
        self._stop_reason: StopReason | None = None
        self.handle: InstanceHandle | None = None
        self.link: InstanceLink | None = None
        self.link_arrived = trio.Event()
        self.created_at = trio.current_time()
        self.ready_at: float | None = None
        self.last_active = self.created_at
        self.served = 0
        self.dispatched = 0
        self.credits = 0  # requests the instance has pulled for and not yet received
        # Of those, the ones counted in the pool's spare_credits (all of them while
        # nothing is in flight here, else none: see serving.count_credits).
        self.counted_credits = 0
        # Requests taken for this link so far (each one's Invocation.link_seq), and
        # the link_seq after the last one answered: the worker answers in order and
        # writes each RESULT before it starts the next, so only the request whose
        # link_seq == answered can have started; later ones are still unread.
        self.taken = 0
        self.answered = 0
        # When the oldest unanswered request is one already answered for its caller
        # (it expired while queued behind others here): by then the worker must
        # have skipped it or it is stuck on it, past its deadline (then it is stopped).
        self.overdue_at = math.inf
        self.inflight: dict[str, Invocation] = {}
        self.scope = trio.CancelScope()
        self.last_heard = self.created_at  # any frame from the instance (heartbeat)
        self.breaker_round = 0  # how often the breaker had opened when this one started
        self.sending: Invocation | None = None  # a request whose frame is being written
        self.unsent: bytes | None = None  # the rest of its frame, for the serving task
        self.stop_detail = ""  # e.g. the link error behind LINK_BROKE
        self.code: CodeLease | None = None
        self.exit_status: ExitStatus | None = None
        # When each start phase ended (trio time): code, sandbox, connect (metrics).
        self.marks: dict[str, float] = {}

    @property
    def state(self) -> InstanceState:
        return self._state

    @state.setter
    def state(self, value: InstanceState) -> None:
        # A property so every transition is observed without touching each call site;
        # re-setting the same state (IDLE on every loop turn) is not a change.
        if value is not self._state:
            was_starting = self.starting
            self._state = value
            self._starting_changed(was_starting)
            if self._on_state is not None:
                self._on_state(self)

    @property
    def stop_reason(self) -> StopReason | None:
        """Why the instance is (being) stopped; None while it is meant to run."""
        return self._stop_reason

    @stop_reason.setter
    def stop_reason(self, value: StopReason | None) -> None:
        was_starting = self.starting
        flips = (self._stop_reason is None) is not (value is None)
        self._stop_reason = value
        self._starting_changed(was_starting)
        if flips and self._on_stop is not None:
            self._on_stop(self, value is not None)

    @property
    def starting(self) -> bool:
        """Starting and not asked to stop: capacity that will be ready soon."""
        return self._state is InstanceState.STARTING and self._stop_reason is None

    def _starting_changed(self, was_starting: bool) -> None:
        now = self.starting
        if now is not was_starting and self._on_starting is not None:
            self._on_starting(now)

    def offer_link(self, link: InstanceLink) -> bool:
        if self.link is not None or self.state is not InstanceState.STARTING:
            return False
        self.link = link
        self.link_arrived.set()
        return True

    def stop(self, reason: StopReason, detail: object = None) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_detail = "" if detail is None else str(detail)
        self.scope.cancel()

    @property
    def stop_text(self) -> str | None:
        """The stop reason as logs and ``huselet ctl`` show it, detail included."""
        if self.stop_reason is None:
            return None
        if self.stop_detail:
            return f"{self.stop_reason.value} ({self.stop_detail})"
        return self.stop_reason.value

    def describe(self) -> dict[str, Any]:
        now = trio.current_time()
        return {
            "id": self.id,
            "state": self.state.value,
            "pid": self.handle.pid if self.handle else None,
            "age_s": round(now - self.created_at, 3),
            "idle_s": round(now - self.last_active, 3) if self.state is InstanceState.IDLE else 0.0,
            "served": self.served,
            "start_ms": round((self.ready_at - self.created_at) * 1000, 2)
            if self.ready_at
            else None,
            # Which code it runs: the image digest (None: a plain directory) and layers.
            "code": self.code.digest if self.code else None,
            "layers": list(self.code.layers) if self.code else [],
        }


class CodeLease(Protocol):
    """The function's code, held for one instance's lifetime (an image stays pinned)."""

    image: Path | None

    @property
    def digest(self) -> str | None: ...  # the image's digest; None for a plain directory

    @property
    def layers(self) -> tuple[str, ...]: ...  # layer image digests

    def release(self) -> None: ...


class CodeProvider(Protocol):
    """Where an instance's code comes from; the package cache implements this."""

    async def acquire(self, fn: FunctionSettings) -> CodeLease: ...


class DirectoryCode:
    """The default provider: the function's package is a plain directory."""

    image: Path | None = None
    digest: str | None = None
    layers: tuple[str, ...] = ()

    async def acquire(self, fn: FunctionSettings) -> CodeLease:
        return self

    def release(self) -> None:
        pass


def stopped_by_signal(handle: InstanceHandle | None) -> bool:
    """Is the instance's process in the stopped (T) or traced (t) state?"""
    if handle is None or handle.pid is None:
        return False
    try:
        with open(f"/proc/{handle.pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False  # gone: its exit is seen through the pidfd
    # The command name (in parentheses) may hold spaces; the state follows it.
    return stat.rsplit(b")", 1)[-1].split()[:1] in ([b"T"], [b"t"])
