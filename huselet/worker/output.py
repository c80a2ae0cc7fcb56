"""Tagging a handler's output with its request id, and its traceback as one record.

While a request runs, ``sys.stdout`` and ``sys.stderr`` write each complete
line as ``\\x1eH1<stream><request id>\\x1f<line>`` to the worker's stdout;
the daemon (:mod:`huselet.observe.output`) turns it into a log record with the
request id and the stream name. Both streams go to one file descriptor, so
the order the handler printed in is the order the daemon sees (two pipes
read by two tasks reorder lines). A traceback is one tagged line whose
payload is the JSON-encoded text, so it becomes one record, not ten.

Outside a request (imports, background threads) output passes through as
before. Only code in this process writes these tags; a function that forges
one can only mislabel its own output, and the daemon validates the id.
"""

from __future__ import annotations

import _thread
import json
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

MARK = "\x1eH1"
SEP = "\x1f"
STDOUT, STDERR, TRACEBACK = "o", "e", "t"
_MAX_PENDING = 4096  # a partial line this long is written out as it is
_MAX_TRACEBACK = 3900  # bytes of JSON, within the daemon's 4 KiB line limit

_current: str | None = None  # the request id being served (the main thread's)
# The serving thread, by ident: _thread, not threading, so a zygote that never
# needs threading does not import it (its after-fork hook costs every forked
# instance ~0.3 MB of dirtied memory).
_main = _thread.get_ident()
_sink: TextIO | None = None  # the real stdout, shared by both tagged streams


class TaggedStream:
    """A text stream that tags complete lines while a request is being served."""

    def __init__(self, original: TextIO, stream: str) -> None:
        self._original = original
        self._stream = stream
        self._pending = ""

    def write(self, text: str) -> int:
        rid = _current
        if rid is None or _thread.get_ident() != _main:
            return self._original.write(text)
        self._pending += text
        if "\n" in self._pending or len(self._pending) > _MAX_PENDING:
            *lines, self._pending = self._pending.split("\n")
            if len(self._pending) > _MAX_PENDING:
                lines.append(self._pending)
                self._pending = ""
            _emit(self._stream, rid, lines)
        return len(text)

    def flush_pending(self, rid: str) -> None:
        if self._pending:
            _emit(self._stream, rid, [self._pending])
            self._pending = ""

    def flush(self) -> None:
        self._original.flush()

    def __getattr__(self, name: str) -> Any:
        # fileno, buffer, encoding, isatty...: the real stream's (bytes written to
        # .buffer are not tagged).
        return getattr(self._original, name)


def _emit(stream: str, rid: str, lines: list[str]) -> None:
    sink = _sink or sys.__stdout__
    if sink is None:
        return
    try:
        sink.write("".join(f"{MARK}{stream}{rid}{SEP}{line}\n" for line in lines))
        sink.flush()
    except (OSError, ValueError):
        pass  # the daemon closed our output: nothing to tell it


def install() -> None:
    """Replace ``sys.stdout``/``sys.stderr`` with tagging streams (once per process)."""
    global _sink, _main
    if isinstance(sys.stdout, TaggedStream):
        return
    _main = _thread.get_ident()
    _sink = sys.stdout
    sys.stdout = TaggedStream(sys.stdout, STDOUT)
    sys.stderr = TaggedStream(sys.stderr, STDERR)


@contextmanager
def request(rid: str) -> Iterator[None]:
    """Tag what the handler prints with ``rid`` while it serves that request."""
    global _current
    _current = rid
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, TaggedStream):
                stream.flush_pending(rid)
        _current = None


def report_exception(rid: str | None, exc: BaseException | None = None) -> None:
    """``exc``'s (else the current exception's) traceback as one record, tagged with ``rid``."""
    text = ("".join(traceback.format_exception(exc)) if exc else traceback.format_exc()).rstrip(
        "\n"
    )
    # The daemon reads lines of at most 4 KiB: keep the end (the innermost frames
    # and the error) of a longer traceback.
    payload = json.dumps(text, ensure_ascii=False)
    while len(payload.encode("utf-8", "replace")) > _MAX_TRACEBACK and len(text) > 64:
        text = "..." + text[len(text) // 4 :]
        payload = json.dumps(text, ensure_ascii=False)
    _emit(TRACEBACK, rid or "", [payload])
