"""RequestMeta: what the ingress and the dispatcher share about one request.

The ingress makes one per request with the caller's trace context; the
dispatcher fills in the timings (queue wait, instance start, execution) and
whether the request waited for a new instance. The ingress then turns them
into ``Server-Timing`` and ``X-Huselet-Cold-Start`` on the reply — on every
reply, errors included, so a caller can tell a slow queue from a slow handler.
"""

from __future__ import annotations

from huselet.observe.ids import child_traceparent


class RequestMeta:
    __slots__ = ("cold", "exec_s", "queue_s", "start_s", "trace_id", "traceparent")

    def __init__(self, traceparent: bytes | None = None) -> None:
        self.trace_id, self.traceparent = child_traceparent(traceparent)
        self.queue_s = 0.0
        self.start_s = 0.0
        self.exec_s = 0.0
        self.cold = False

    def headers(self, total_s: float) -> tuple[tuple[bytes, bytes], ...]:
        """``Server-Timing`` (milliseconds) and ``X-Huselet-Cold-Start`` for the reply."""
        timing = b"queue;dur=%.3f, start;dur=%.3f, exec;dur=%.3f, total;dur=%.3f" % (
            self.queue_s * 1000,
            self.start_s * 1000,
            self.exec_s * 1000,
            total_s * 1000,
        )
        return ((b"Server-Timing", timing), (b"X-Huselet-Cold-Start", b"1" if self.cold else b"0"))
