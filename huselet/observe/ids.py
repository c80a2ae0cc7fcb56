"""Request ids and W3C trace context, cheap enough for every request.

A request id is a per-process random prefix and a counter: unique per node
run, 16 hex characters like before, and ~10x cheaper than ``secrets.token_hex``
(a getrandbits syscall per request showed up at 5 % of the daemon's CPU).
Request ids are correlation handles, not secrets; nothing grants access by one.

Trace and span ids need to be unique, not unpredictable: a random 96-bit
(trace) or 32-bit (span) prefix drawn once per process, then a counter — no
random number per request. A caller's ``traceparent`` is validated against
the W3C grammar; a malformed one is replaced by a fresh trace, and the raw
header is never copied anywhere.
"""

from __future__ import annotations

import itertools
import os
import re

_PREFIX = os.urandom(4).hex()
_COUNTER = itertools.count(1)
_TRACE_PREFIX = os.urandom(12).hex()
_SPAN_PREFIX = os.urandom(4).hex()
_SPANS = itertools.count(1)

# version-traceid-parentid-flags; version ff is invalid; all-zero ids are invalid.
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
# Same rule the gateway applies to a caller's request id.
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def new_request_id() -> str:
    return f"{_PREFIX}{next(_COUNTER) & 0xFFFFFFFF:08x}"


def new_span_id() -> str:
    # The counter's low 32 bits start at 1, so the id is never all zeros.
    return f"{_SPAN_PREFIX}{next(_SPANS) & 0xFFFFFFFF or 1:08x}"


def new_trace_id() -> str:
    return f"{_TRACE_PREFIX}{next(_SPANS) & 0xFFFFFFFF or 1:08x}"


def child_traceparent(raw: bytes | None) -> tuple[str, str]:
    """``(trace_id, traceparent)`` to pass on for a request that arrived with ``raw``.

    A well-formed ``raw`` keeps its trace id and flags and gets our span as
    parent; anything else (absent, malformed, version ff, zero ids) starts a
    new trace. A future version with extra fields is accepted by its prefix,
    as the W3C spec asks.
    """
    if raw is not None:
        m = _TRACEPARENT.match(raw.strip())
        if m is not None:
            version, trace, span, flags = m.groups()
            tail_ok = version == b"00" and m.end() == len(raw.strip())
            future_ok = version not in (b"00", b"ff") and raw.strip()[m.end() : m.end() + 1] in (
                b"",
                b"-",
            )
            if (tail_ok or future_ok) and trace != _ZERO_TRACE and span != _ZERO_SPAN:
                trace_id = trace.decode("ascii")
                return trace_id, f"00-{trace_id}-{new_span_id()}-{flags.decode('ascii')}"
    trace_id = new_trace_id()
    return trace_id, f"00-{trace_id}-{new_span_id()}-00"
