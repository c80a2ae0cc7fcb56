"""The daemon's log writer: lines in order, a stalled stream never blocks a caller,
a full buffer drops and counts lines and says so in the stream, flush has a deadline."""

from __future__ import annotations

import io
import json
import logging
import threading
import time

from support import WAIT_S

from huselet.log import FieldsRecord, JsonFormatter
from huselet.logwriter import BackgroundLogWriter


class StalledStream(io.StringIO):
    """A stream whose writes wait until ``release`` is set (a stderr nobody reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait()
        return super().write(text)


def make_logger(handler: logging.Handler, name: str) -> logging.Logger:
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"huselet.test-logwriter.{name}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def messages(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_lines_reach_the_stream_in_order() -> None:
    stream = io.StringIO()
    handler = BackgroundLogWriter(stream)
    logger = make_logger(handler, "order")
    for i in range(500):
        logger.info("line", extra={"fields": {"i": i}})
    handler.flush()
    assert [m["i"] for m in messages(stream.getvalue())] == list(range(500))
    assert handler.dropped == 0
    handler.close()


def test_a_stalled_stream_never_blocks_the_caller_and_drops_are_reported() -> None:
    stream = StalledStream()
    handler = BackgroundLogWriter(stream, max_buffered_bytes=16 * 1024)
    logger = make_logger(handler, "stalled")
    done = threading.Event()

    def flood() -> None:  # ~100 bytes a line: ~6x the buffer
        for i in range(1000):
            logger.info("line", extra={"fields": {"i": i}})
        done.set()

    threading.Thread(target=flood, daemon=True).start()
    # The writer is stuck in write(): were emit waiting on it, this never comes.
    assert done.wait(WAIT_S), "logging blocked on a stalled stream"
    assert handler.dropped > 0
    assert handler.buffered_bytes <= 16 * 1024
    stream.release.set()
    handler.flush()
    out = messages(stream.getvalue())
    reports = [m for m in out if m["msg"].startswith("log lines dropped")]
    assert sum(int(r["dropped"]) for r in reports) == handler.dropped
    assert reports[0]["level"] == "warning" and reports[0]["component"] == "log"
    kept = [m["i"] for m in out if "i" in m]
    assert kept == sorted(kept) and len(kept) + handler.dropped == 1000
    handler.close()


def test_flush_gives_up_on_a_stream_that_never_takes_the_line() -> None:
    stream = StalledStream()
    handler = BackgroundLogWriter(stream)
    logger = make_logger(handler, "stuck")
    logger.info("never written")
    handler.flush(timeout_s=0.2)  # returns: a stuck stderr cannot hold the process at exit
    assert stream.getvalue() == ""
    stream.release.set()
    handler.close()
    assert messages(stream.getvalue())[0]["msg"] == "never written"


def test_a_broken_stream_does_not_stop_the_writer() -> None:
    class Broken(io.StringIO):
        fail = True

        def write(self, text: str) -> int:
            if self.fail:
                self.fail = False
                raise BrokenPipeError("reader gone")
            return super().write(text)

    stream = Broken()
    handler = BackgroundLogWriter(stream)
    logger = make_logger(handler, "broken")
    logger.info("lost")
    handler.flush()
    logger.info("after")
    handler.flush()
    assert [m["msg"] for m in messages(stream.getvalue())] == ["after"]
    handler.close()


def test_lines_logged_apart_are_gathered_into_few_writes() -> None:
    """The writer gathers lines for ``gather_s`` after a write instead of waking for
    each one: every wake-up is a GIL hand-over with the event loop."""

    class Counting(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            self.writes += 1
            return super().write(text)

    def run(gather_s: float) -> int:
        stream = Counting()
        handler = BackgroundLogWriter(stream, gather_s=gather_s)
        logger = make_logger(handler, f"gather-{gather_s}")
        for i in range(40):
            logger.info("line", extra={"fields": {"i": i}})
            time.sleep(0.005)  # a log rate, not a synchronisation: 40 lines over >= 0.2 s
        handler.flush()
        handler.close()
        assert [m["i"] for m in messages(stream.getvalue())] == list(range(40))
        return stream.writes

    gathered = run(gather_s=2.0)
    assert gathered <= 5  # the first line, then what gathered behind it (even 8 s of load)
    assert run(gather_s=0.0) > gathered  # without gathering: about one write per line


def test_a_record_that_cannot_be_rendered_leaves_a_line_and_the_writer_goes_on() -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    stream = io.StringIO()
    handler = BackgroundLogWriter(stream)
    handler.emit_direct(FieldsRecord("access", "request", {"bad": Unprintable()}))
    handler.emit_direct(FieldsRecord("access", "request", {"request_id": "r-2"}))
    handler.flush()
    bad, good = messages(stream.getvalue())
    assert bad["msg"] == "log record could not be rendered" and bad["record_msg"] == "request"
    assert "RuntimeError: no" in str(bad["error"])
    assert good["request_id"] == "r-2" and good["component"] == "access"
    handler.close()
