"""The daemon side of the worker's output tags (see :mod:`huselet.worker.output`).

A tagged line carries the stream and the request id the handler was serving
when it printed; a traceback arrives as one tagged line with its text
JSON-encoded. Each becomes one log record with ``request_id`` set — the
traceback at error level with the text in a ``traceback`` field. A tag that
does not parse (a forged or truncated one) leaves the line as plain output:
nothing from a function reaches the log except as a JSON-escaped field value.
"""

from __future__ import annotations

import json
from typing import Any

from huselet.observe.ids import REQUEST_ID

MARK = b"\x1eH1"
SEP = b"\x1f"
STREAMS = {b"o": "stdout", b"e": "stderr"}
TRACEBACK = b"t"


def log_output_line(
    line: bytes, stream_name: str, fields: dict[str, Any], logger: Any, max_bytes: int
) -> None:
    """One line of a worker's output as a log record (tagged: with its request id)."""
    if line.startswith(MARK):
        tag, sep, payload = line[len(MARK) :].partition(SEP)
        kind, rid = tag[:1], tag[1:].decode("ascii", "replace")
        if sep and (not rid or REQUEST_ID.fullmatch(rid)):
            extra = {"request_id": rid} if rid else {}
            if kind == TRACEBACK:
                try:
                    text = json.loads(payload)
                except ValueError:
                    text = None
                if isinstance(text, str):
                    last = text.rstrip().rpartition("\n")[2]
                    logger.error(
                        "handler raised",
                        error=last[:512],
                        traceback=text[: max_bytes * 4],
                        **extra,
                        **fields,
                    )
                    return
            elif kind in STREAMS:
                text = payload[:max_bytes].decode("utf-8", "replace")
                logger.info("instance output", stream=STREAMS[kind], line=text, **extra, **fields)
                return
    text = line[:max_bytes].decode("utf-8", "replace")
    logger.info("instance output", stream=stream_name, line=text, **fields)
