"""The framed ingress's counters, declared once (``huselet ctl status``: ``node.framed``).

Members are their strings (a StrEnum), so the status JSON keeps its words.
"""

from __future__ import annotations

from enum import StrEnum


class FramedCounter(StrEnum):
    CONNECTIONS = "connections"
    CALLS = "calls"
    REFUSED = "refused"  # connections over the bound, closed at once
    DROPPED_SLOW = "dropped_slow"  # a caller that did not read its replies
    REPLIES_BATCHED = "replies_batched"  # replies sent in the same write as another
