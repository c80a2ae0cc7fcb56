"""Change events of the dispatcher that any number of listeners can subscribe to.

A function or instance added, changed or removed is reported to every
subscriber (today the fleet's state model; metrics or an event stream could
listen too) instead of through one ``on_change`` slot that the last writer
owned. A listener that raises is logged and skipped: reporting must never
break serving, nor starve the other listeners.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from huselet.log import get_logger

log = get_logger("dispatch")

# (kind "function" | "instance", name, body; None: it is gone)
ChangeListener = Callable[[str, str, "dict[str, Any] | None"], None]
MAX_LISTENERS = 64  # a bound: a leak of subscriptions fails loudly, not slowly


class ChangeEvents:
    def __init__(self) -> None:
        self._listeners: list[ChangeListener] = []

    def subscribe(self, listener: ChangeListener) -> None:
        """Call ``listener`` on every change from now on (once, even if subscribed twice)."""
        if listener in self._listeners:
            return
        if len(self._listeners) >= MAX_LISTENERS:
            raise RuntimeError(f"more than {MAX_LISTENERS} change listeners: a leak?")
        self._listeners.append(listener)

    def unsubscribe(self, listener: ChangeListener) -> None:
        """Stop calling ``listener``; one that was not subscribed is ignored."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def emit(self, kind: str, name: str, body: dict[str, Any] | None) -> None:
        # A copy: a listener may unsubscribe (itself or another) while we iterate.
        for listener in tuple(self._listeners):
            try:
                listener(kind, name, body)
            except Exception:
                log.exception("change listener failed", kind=kind, name=name)

    def __len__(self) -> int:
        return len(self._listeners)
