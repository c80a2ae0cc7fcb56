"""The request story's lazy records (huselet.observe.records) as the ring and the log see them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from huselet.dispatch.invocation import Invocation, InvokeResult
from huselet.errors import HandlerError
from huselet.observe.context import RequestMeta
from huselet.observe.records import AccessRecord, AdmittedRecord
from huselet.observe.ring import LogRing
from huselet.observe.story import RequestStory


class Pool:
    """The two attributes of a FunctionPool the story reads."""

    name = "alpha"

    def __init__(self) -> None:
        self.buffer: list[object] = [object(), object()]


@pytest.fixture
def ring(attach_ring: Callable[[LogRing], LogRing]) -> LogRing:
    return attach_ring(LogRing(50, lambda name: name == "alpha"))


def _answered(request_id: str, outcome: InvokeResult | HandlerError) -> Invocation:
    inv = Invocation(request_id, "alpha", b"{}", "json", trio.current_time() + 30)
    inv.dispatched_at = inv.enqueued_at
    inv.attempts = 2
    inv.complete(outcome)
    return inv


async def test_records_kept_in_the_ring_read_as_the_fields_they_stand_for(ring: LogRing) -> None:
    story = RequestStory(metrics=None, ring=ring, access_rate=0)  # nothing to the log
    meta = RequestMeta(b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01")
    inv = _answered("r1", HandlerError("ValueError", "bad"))
    story.admitted(Pool(), inv, meta)  # type: ignore[arg-type]
    story.finished(Pool(), inv, meta)  # type: ignore[arg-type]
    got = ring.query("alpha", request_id="r1")
    assert got is not None
    admitted, access = got["records"]
    assert (admitted["msg"], admitted["component"]) == ("request admitted", "dispatcher")
    assert (admitted["queued"], admitted["trace_id"]) == (2, "a" * 32)
    assert access["msg"] == "request" and access["component"] == "access"
    assert (access["status"], access["error"]) == (502, "handler_error")
    assert access["attempts"] == 2 and access["trace_id"] == "a" * 32
    assert access["instance"] is None and access["cold_start"] is False
    assert access["ms"] == round(meta.exec_s * 1000, 3) == access["exec_ms"]
    assert set(access) >= {"queue_ms", "start_ms", "seq", "ts", "level"}


async def test_a_logged_access_record_says_how_many_were_sampled_out(
    ring: LogRing, autojump_clock: trio.abc.Clock
) -> None:
    story = RequestStory(metrics=None, ring=ring, access_rate=1)
    for i in range(3):  # one token: the first is logged, two are sampled out
        story.finished(Pool(), _answered(f"s{i}", InvokeResult(b"1", "json")), None)  # type: ignore[arg-type]
    await trio.sleep(1.5)
    story.finished(Pool(), _answered("s3", InvokeResult(b"1", "json")), None)  # type: ignore[arg-type]
    got = ring.query("alpha")
    assert got is not None
    records = {r["request_id"]: r for r in got["records"]}
    assert "sampled_out" not in records["s0"] and "sampled_out" not in records["s1"]
    assert records["s3"]["sampled_out"] == 2
    assert records["s3"]["status"] == 200 and "error" not in records["s3"]


def test_a_record_is_a_read_only_mapping() -> None:
    record = AccessRecord("alpha", "r9", 200, None, "i-1", 1, None)
    record.total_s = 0.0012345
    assert record.get("function") == "alpha" and record.get("request_id") == "r9"
    assert record["ms"] == 1.234 and record.get("missing", 7) == 7
    assert dict(record.items()) == dict(record) == record.fields()
    assert len(AdmittedRecord("alpha", "r9", 0, None)) == 3  # no trace_id without one
