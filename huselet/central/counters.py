"""The central scheduler's counters, declared once (``GET /v1/health``: ``counters``).

Members are their strings (a StrEnum). Some are counted per kind, as
``<counter>.<kind>`` (``results.ok``, ``handshake_failed.TimeoutError``):
:meth:`CentralCounter.by` spells that key.
"""

from __future__ import annotations

from enum import StrEnum


class CentralCounter(StrEnum):
    # The server: leadership, commands, reconciliation.
    LEADERSHIP_LOST = "leadership_lost"
    RESULTS = "results"  # per result status
    ISSUED = "issued"  # per command kind
    EXPIRED = "expired"
    RECONCILE_ROUNDS = "reconcile_rounds"
    RECONCILE_ERRORS = "reconcile_errors"
    # Node sessions.
    CONNECTIONS_REFUSED = "connections_refused"
    INTERNAL_ERRORS = "internal_errors"
    HANDSHAKE_FAILED = "handshake_failed"  # per exception class
    REDIRECTED = "redirected"
    BYTES_IN = "bytes_in"
    BYTES_OUT = "bytes_out"
    SEND_TIMEOUTS = "send_timeouts"
    PROTOCOL_ERROR = "protocol_error"  # per exception class
    DELTAS_APPLIED = "deltas_applied"
    CONNECTS = "connects"  # per mode (fresh, resume, ...)
    SNAPSHOTS = "snapshots"
    DIGEST_MISMATCHES = "digest_mismatches"

    def by(self, kind: object) -> str:
        """The key counting this per ``kind``: ``"<counter>.<kind>"``."""
        return f"{self.value}.{kind}"
