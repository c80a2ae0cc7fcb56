"""The node's state model as the central scheduler sees it: resources and their deltas.

Resources reported (``kind/name → body``; bodies are small, they travel on
every change):

- ``node/self`` — identity, labels, huselet version, whether the node takes
  new placements (``placements``: ``open`` | ``drained`` | ``lease_expired``)
- ``capacity/node`` — memory offered and in use, instances by state
- ``function/<name>`` — the function as :meth:`Dispatcher.describe_function` says
- ``instance/<id>`` — ``{"function", "state"}``

Every change the node's dispatcher reports (to its change subscribers) becomes
one ``NodeSession.queue_delta``/``queue_removal``. The session coalesces per
resource and frames a batch after a bounded delay (or at once when the batch
is full), so a burst of thousands of instance transitions per second leaves
as a few frames, one delta per resource that changed.

``capacity/node`` is derived from nearly every instance change, so it is not
queued per change: a change marks it dirty and :meth:`NodeStateModel.sync`
(called by the link right before the session's timers run) computes it once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import huselet
from huselet.dispatch.api import ObservedDispatcher
from huselet.log import get_logger
from protocol.delta import DeltaUsageError, NodeSession

log = get_logger("fleet")

PLACEMENTS_OPEN = "open"
PLACEMENTS_DRAINED = "drained"
PLACEMENTS_LEASE_EXPIRED = "lease_expired"


class NodeStateModel:
    """Feeds the node's resources into a :class:`NodeSession` as deltas."""

    def __init__(
        self,
        session: NodeSession,
        *,
        memory_mb: int,
        labels: Mapping[str, str] | None = None,
        clock: Callable[[], float],
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.session = session
        self.memory_mb = memory_mb
        self.labels = dict(labels or {})
        self._clock = clock
        self._wake = wake  # the link's writer must look at the session again
        self.placements = PLACEMENTS_LEASE_EXPIRED  # no lease before the first WELCOME
        self._fn_mb: dict[str, int] = {}
        self._instances: dict[str, tuple[str, int]] = {}  # id -> (state, memory_mb)
        self._by_state: Counter[str] = Counter()
        self._used_mb = 0
        self._capacity_dirty = True
        self._last_capacity: dict[str, Any] | None = None
        self.changes = 0  # changes queued (before coalescing)
        self.dropped = 0  # changes the session refused (resource limit, oversized body)
        self._put_node()

    # --- observer of the node dispatcher -------------------------------------------

    def attach(self, dispatcher: ObservedDispatcher) -> None:
        """Observe the node's ``dispatcher`` and report everything it has now."""
        dispatcher.subscribe(self.on_change)
        for name, pool in list(dispatcher.pools.items()):
            self.on_change("function", name, dispatcher.describe_function(name))
            for record in list(pool.instances.values()):
                body = {"function": name, "state": record.state.value}
                self.on_change("instance", record.id, body)

    def on_change(self, kind: str, name: str, body: dict[str, Any] | None) -> None:
        """One change of a function or instance (``body`` None: it is gone)."""
        if kind == "instance":
            self._track_instance(name, body)
        elif kind == "function":
            if body is None:
                self._fn_mb.pop(name, None)
            else:
                self._fn_mb[name] = int(body.get("memory_mb", 0))
            self._capacity_dirty = True
        if body is None:
            self._remove(kind, name)
        else:
            self._put(kind, name, body)

    def _track_instance(self, name: str, body: dict[str, Any] | None) -> None:
        old = self._instances.pop(name, None)
        if old is not None:
            self._by_state[old[0]] -= 1
            self._used_mb -= old[1]
        if body is not None:
            state = str(body.get("state"))
            mb = old[1] if old is not None else self._fn_mb.get(str(body.get("function")), 0)
            self._instances[name] = (state, mb)
            self._by_state[state] += 1
            self._used_mb += mb
        self._capacity_dirty = True

    # --- node-level facts ------------------------------------------------------------

    def set_placements(self, placements: str) -> None:
        if placements != self.placements:
            self.placements = placements
            self._put_node()

    def _put_node(self) -> None:
        self._put(
            "node",
            "self",
            {
                "version": huselet.__version__,
                "labels": self.labels,
                "placements": self.placements,
            },
        )

    def capacity(self) -> dict[str, Any]:
        return {
            "memory_mb": self.memory_mb,
            "memory_used_mb": self._used_mb,
            "functions": len(self._fn_mb),
            "instances": len(self._instances),
            "by_state": {state: n for state, n in sorted(self._by_state.items()) if n},
        }

    def sync(self, now: float) -> None:
        """Queue the derived ``capacity/node`` if it changed since it was last queued."""
        if not self._capacity_dirty:
            return
        self._capacity_dirty = False
        body = self.capacity()
        if body != self._last_capacity:
            self._last_capacity = body
            self._put("capacity", "node", body, now)

    # --- into the session ----------------------------------------------------------------

    def _put(self, kind: str, name: str, body: Any, now: float | None = None) -> None:
        batch = self.session.state.batch
        before = len(batch)
        try:
            self.session.queue_delta(kind, name, body, self._clock() if now is None else now)
        except DeltaUsageError as exc:
            self._refused(kind, name, exc)
            return
        self.changes += 1
        self._woken(before, len(batch))

    def _remove(self, kind: str, name: str) -> None:
        batch = self.session.state.batch
        before = len(batch)
        try:
            self.session.queue_removal(kind, name, self._clock())
        except DeltaUsageError as exc:
            self._refused(kind, name, exc)
            return
        self.changes += 1
        self._woken(before, len(batch))

    def _woken(self, before: int, after: int) -> None:
        # The writer sleeps until the session's next deadline. It must look again
        # when a first change starts a batch (a new, nearer deadline) or when the
        # batch filled up and was framed at once (bytes are waiting to be sent).
        if self._wake is not None and (before == 0 or after == 0):
            self._wake()

    def _refused(self, kind: str, name: str, exc: DeltaUsageError) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning(
                "state change not reported",
                kind=kind,
                name=name[:128],
                error=str(exc),
                dropped=self.dropped,
            )
