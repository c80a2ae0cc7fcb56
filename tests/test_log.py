"""Structured log lines: ``render`` is the one JSON shape, and ``info_direct`` (the access
log's way in) writes exactly what ``info`` would, or goes through ``logging`` when a
handler on the tree needs a real ``LogRecord``."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from huselet.log import get_logger, render, setup_logging
from huselet.logwriter import BackgroundLogWriter
from huselet.observe.records import AccessRecord
from huselet.observe.ring import LogRing


@pytest.fixture
def huselet_tree() -> Iterator[logging.Logger]:
    """The ``huselet`` logger tree as a test found it, restored afterwards."""
    root = logging.getLogger("huselet")
    saved = (list(root.handlers), root.level, root.propagate)
    try:
        yield root
    finally:
        for handler in root.handlers:
            if handler not in saved[0]:
                handler.close()
        root.handlers[:], root.level, root.propagate = saved[0], saved[1], saved[2]


def access_record() -> AccessRecord:
    record = AccessRecord("alpha", "r-1", 502, "handler_error", "i-3", 2, "ab" * 16)
    record.total_s, record.exec_s, record.cold = 0.0123456, 0.01, True
    return record


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_render_is_what_json_dumps_made() -> None:
    fields = {"function": "ä", "path": b"/x", "n": 1.5, "none": None}
    got = render(0.25, "info", "access", "request", fields, "Traceback")
    want: dict[str, object] = {"ts": "1970-01-01T00:00:00.250000Z", "level": "info"}
    want |= {"component": "access", "msg": "request", **fields, "exc": "Traceback"}
    assert got == json.dumps(want, default=str, ensure_ascii=False)


def test_info_direct_writes_the_line_info_would(huselet_tree: logging.Logger) -> None:
    stream = io.StringIO()
    setup_logging("info", stream, background=True)
    writer = huselet_tree.handlers[0]
    assert isinstance(writer, BackgroundLogWriter)
    log = get_logger("access")
    record = access_record()
    log.info("request", **record.fields())
    log.info_direct("request", record)
    writer.flush()
    old, new = lines(stream)
    assert old.pop("ts") and new.pop("ts")
    assert list(new.items()) == list(old.items())  # the same keys in the same order
    assert new["component"] == "access" and new["error"] == "handler_error"


def test_info_direct_keeps_the_record_in_the_ring(huselet_tree: logging.Logger) -> None:
    stream = io.StringIO()
    setup_logging("info", stream, background=True)
    ring = LogRing(10, lambda name: name == "alpha")
    huselet_tree.addHandler(ring)
    get_logger("access").info_direct("request", access_record())
    got = ring.query("alpha", request_id="r-1")
    assert got is not None and len(got["records"]) == 1
    kept = got["records"][0]
    assert (kept["msg"], kept["component"], kept["status"]) == ("request", "access", 502)
    huselet_tree.handlers[0].flush()
    assert [line["request_id"] for line in lines(stream)] == ["r-1"]


def test_info_direct_goes_through_logging_for_any_other_handler(
    huselet_tree: logging.Logger,
) -> None:
    # A handler that needs a LogRecord (here a plain one, as a test's capture is):
    # the record reaches it, fields and all, and the direct path is not taken.
    captured: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    stream = io.StringIO()
    setup_logging("info", stream, background=True)
    huselet_tree.addHandler(Capture())
    get_logger("access").info_direct("request", access_record())
    assert len(captured) == 1
    assert captured[0].getMessage() == "request"
    assert captured[0].__dict__["fields"]["request_id"] == "r-1"
    huselet_tree.handlers[0].flush()
    assert [line["request_id"] for line in lines(stream)] == ["r-1"]  # and the writer too


def test_info_direct_honours_the_level(huselet_tree: logging.Logger) -> None:
    stream = io.StringIO()
    setup_logging("warning", stream, background=True)
    get_logger("access").info_direct("request", access_record())
    huselet_tree.handlers[0].flush()
    assert stream.getvalue() == ""
