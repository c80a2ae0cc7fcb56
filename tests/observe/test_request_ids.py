"""Request ids and W3C traceparent handling (huselet.observe.ids)."""

from __future__ import annotations

import re

import pytest

from huselet.observe.ids import child_traceparent, new_request_id

TP = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
CALLER = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_request_ids_are_unique_and_well_formed() -> None:
    ids = {new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)


def test_a_valid_traceparent_keeps_its_trace_and_flags_with_our_span() -> None:
    trace_id, passed = child_traceparent(CALLER)
    assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert TP.fullmatch(passed)
    _version, trace, span, flags = passed.split("-")
    assert (trace, flags) == (trace_id, "01")
    assert span != "00f067aa0ba902b7"  # the invocation is a new span under the caller's


def test_a_future_version_is_read_by_its_prefix() -> None:
    trace_id, passed = child_traceparent(CALLER.replace(b"00-", b"01-", 1) + b"-extra")
    assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert passed.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"garbage",
        b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        CALLER + b"-trailing",  # version 00 has exactly four fields
        b'00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n{"evil": 1}',
    ],
)
def test_a_malformed_traceparent_is_replaced_never_copied(raw: bytes | None) -> None:
    trace_id, passed = child_traceparent(raw)
    assert TP.fullmatch(passed)
    assert trace_id != "4bf92f3577b34da6a3ce929d0e0e4736"
    assert passed.endswith("-00")
