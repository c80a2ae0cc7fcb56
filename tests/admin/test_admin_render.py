"""Tests of the text rendering behind ``huselet ctl status | functions | instances``.

The inputs have the shapes the daemon really produces (``Dispatcher.status()``
plus the daemon's ``node`` part, ``Dispatcher.instances()``).
"""

from __future__ import annotations

from typing import Any

import pytest

from huselet.admin.render import (
    FUNCTION_HEADERS,
    INSTANCE_HEADERS,
    render_functions,
    render_instances,
    render_status,
)
from huselet.admin.render_cells import format_duration, format_ms, render_table


def hello_status() -> dict[str, Any]:
    return {
        "name": "hello",
        "runtime": "process",
        "max_instances": 8,
        "instances": {"starting": 0, "idle": 2, "busy": 1, "stopping": 0},
        "queued": 3,
        "inflight": 1,
        "counters": {
            "accepted": 120,
            "ok": 110,
            "handler_errors": 4,
            "deadline_exceeded": 1,
            "rejected_queue_full": 2,
            "instances_started": 3,
        },
        "last_start_error": None,
    }


def resize_status() -> dict[str, Any]:
    return {
        "name": "resize-image",
        "runtime": "process",
        "max_instances": 16,
        "instances": {"starting": 1, "idle": 0, "busy": 0, "stopping": 0},
        "queued": 0,
        "inflight": 0,
        "counters": {},
        "last_start_error": "ModuleNotFoundError: No module named 'PIL'\n  at line 1",
    }


def node_status(*, draining: bool = False) -> dict[str, Any]:
    return {
        "node": {
            "id": "node-a",
            "version": "0.1.0",
            "uptime_s": 3725.4,
            "pid": 4242,
            "http": "127.0.0.1:8470",
            "admin_socket": "/run/huselet/admin.sock",
        },
        "draining": draining,
        "functions": [hello_status(), resize_status()],
        "instances": {"starting": 1, "idle": 2, "busy": 1, "stopping": 0},
        "queued": 3,
        "counters": {"accepted": 120, "ok": 110, "handler_errors": 4},
    }


INSTANCES = [
    {
        "function": "hello",
        "id": "hello-1a2b3c4d",
        "state": "idle",
        "pid": 1234,
        "age_s": 75.3,
        "idle_s": 4.25,
        "served": 10,
        "start_ms": 123.4,
    },
    {
        "function": "resize-image",
        "id": "resize-image-00ff00ff",
        "state": "starting",
        "pid": None,
        "age_s": 0.4,
        "idle_s": 0.0,
        "served": 0,
        "start_ms": None,
    },
]


def columns_of(table: str) -> dict[str, list[str]]:
    """Split an aligned table back into named columns.

    Columns are the runs of character positions where some line has a
    non-space; the two-space gaps are positions blank on every line. A row out
    of alignment breaks the run structure (or the one-header-per-run check)
    and the calling test fails. Valid only for cells without inner spaces.
    """
    lines = table.splitlines()
    width = max(len(line) for line in lines)
    padded = [line.ljust(width) for line in lines]
    used = [any(line[i] != " " for line in padded) for i in range(width)]
    runs: list[tuple[int, int]] = []
    for i, flag in enumerate(used):
        if flag and (i == 0 or not used[i - 1]):
            runs.append((i, i + 1))
        elif flag:
            runs[-1] = (runs[-1][0], i + 1)
    names = [padded[0][a:b].strip() for a, b in runs]
    assert names == lines[0].split(), f"header and columns disagree: {names}"
    return {
        n: [line[a:b].strip() for line in padded[1:]] for n, (a, b) in zip(names, runs, strict=True)
    }


# --- render_table -------------------------------------------------------------


def test_render_table_aligns_exactly() -> None:
    text = render_table(
        ["NAME", "COUNT", "NOTE"],
        [["a", 1, "first"], ["longer-name", 12345, None], ["b", 2.5, True]],
        align="<><",
    )
    assert text == (
        "NAME         COUNT  NOTE\n"
        "a                1  first\n"
        "longer-name  12345  -\n"
        "b              2.5  yes"
    )


def test_render_table_pads_short_rows_and_refuses_long_ones() -> None:
    assert render_table(["A", "B"], [["x"]]) == "A  B\nx  -"
    assert render_table(["A", "B"], [["", None]]) == "A  B\n-  -"
    with pytest.raises(ValueError, match="3 cells"):
        render_table(["A", "B"], [["x", "y", "z"]])
    with pytest.raises(ValueError, match="align"):
        render_table(["A", "B"], [], align="<")


def test_render_table_neutralises_control_characters() -> None:
    text = render_table(["MSG"], [["line1\nline2\x1b[31m"]])
    assert text.splitlines() == ["MSG", "line1 line2?[31m"]


def test_render_table_with_no_rows_is_just_the_header() -> None:
    assert render_table(["A", "BB"], []) == "A  BB"


# --- formats ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0.0s"),
        (4.25, "4.2s"),
        (42.9, "42s"),
        (185, "3m05s"),
        (3725.4, "1h02m"),
        (3 * 86400 + 4 * 3600 + 59, "3d04h"),
        (None, "-"),
        ("soon", "-"),
        (True, "-"),
        (-1, "-"),
    ],
)
def test_format_duration(seconds: Any, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_ms() -> None:
    assert [format_ms(v) for v in (4.25, 123.4, None, "x")] == ["4.2ms", "123ms", "-", "-"]


# --- functions ------------------------------------------------------------------


def test_render_functions_columns_and_values() -> None:
    text = render_functions([hello_status(), resize_status()])
    table, _, notes = text.partition("\n\n")
    assert table.splitlines()[0].split() == list(FUNCTION_HEADERS)
    cols = columns_of(table)
    assert cols["FUNCTION"] == ["hello", "resize-image"]
    assert cols["RUNTIME"] == ["process", "process"]
    assert cols["INSTANCES"] == ["3/8", "1/16"]
    assert cols["STARTING"] == ["0", "1"]
    assert cols["IDLE"] == ["2", "0"]
    assert cols["BUSY"] == ["1", "0"]
    assert cols["INFLIGHT"] == ["1", "0"]
    assert cols["QUEUED"] == ["3", "0"]
    assert cols["ACCEPTED"] == ["120", "0"]  # empty counters mean zero, not unknown
    assert cols["OK"] == ["110", "0"]
    assert cols["FAILED"] == ["5", "0"]  # 4 handler errors + 1 deadline
    assert cols["REJECTED"] == ["2", "0"]
    # The start error is a note under the table, on one line.
    assert notes == (
        "resize-image: last start failed: ModuleNotFoundError: No module named 'PIL'   at line 1"
    )


def test_render_functions_numbers_are_right_aligned() -> None:
    text = render_functions([hello_status(), {**resize_status(), "queued": 12345}])
    lines = text.partition("\n\n")[0].splitlines()
    header_end = lines[0].index("QUEUED") + len("QUEUED")
    # Right-aligned: every value of the column ends where its header ends.
    assert lines[1][:header_end].endswith(" 3")
    assert lines[2][:header_end].endswith("12345")


def test_render_functions_tolerates_missing_keys() -> None:
    text = render_functions([{"name": "bare"}])
    assert "\n\n" not in text  # no note without a start error
    cols = columns_of(text)
    assert cols["FUNCTION"] == ["bare"]
    assert cols["INSTANCES"] == ["-/-"]
    for header in FUNCTION_HEADERS[3:]:
        assert cols[header] == ["-"], header


def test_render_functions_empty() -> None:
    assert render_functions([]) == "no functions configured"


# --- instances ------------------------------------------------------------------


def test_render_instances_columns_and_values() -> None:
    text = render_instances(INSTANCES)
    lines = text.splitlines()
    assert lines[0].split() == list(INSTANCE_HEADERS)
    assert len(lines) == 3
    cols = columns_of(text)
    assert cols["FUNCTION"] == ["hello", "resize-image"]
    assert cols["ID"] == ["hello-1a2b3c4d", "resize-image-00ff00ff"]
    assert cols["STATE"] == ["idle", "starting"]
    assert cols["PID"] == ["1234", "-"]
    assert cols["AGE"] == ["1m15s", "0.4s"]
    # Idle time only means something for an idle instance.
    assert cols["IDLE"] == ["4.2s", "-"]
    assert cols["SERVED"] == ["10", "0"]
    assert cols["START"] == ["123ms", "-"]


def test_render_instances_keeps_the_daemons_order() -> None:
    text = render_instances(list(reversed(INSTANCES)))
    assert columns_of(text)["FUNCTION"] == ["resize-image", "hello"]


def test_render_instances_tolerates_missing_keys() -> None:
    cols = columns_of(render_instances([{"id": "x-1"}]))
    assert cols["ID"] == ["x-1"]
    assert [cols[h][0] for h in INSTANCE_HEADERS if h != "ID"] == ["-"] * 8


def test_code_digests_are_shown_short() -> None:
    digest = "ab" * 32
    other = "cd" * 32
    instances = columns_of(render_instances([{**INSTANCES[0], "code": digest}]))
    assert instances["CODE"] == [digest[:12]]
    functions = columns_of(render_functions([{**hello_status(), "code": [digest, other]}]))
    assert functions["CODE"] == [f"{digest[:12]},{other[:12]}"]


def test_render_instances_empty() -> None:
    assert render_instances([]) == "no instances"


# --- status ---------------------------------------------------------------------


def test_render_status_summary_then_functions() -> None:
    text = render_status(node_status())
    head, _, rest = text.partition("\n\n")
    fields = dict(line.split(None, 1) for line in head.splitlines())
    assert fields == {
        "node": "node-a (huselet 0.1.0, pid 4242)",
        "uptime": "1h02m",
        "http": "127.0.0.1:8470",
        "admin": "/run/huselet/admin.sock",
        "state": "serving",
        "instances": "4 (1 starting, 2 idle, 1 busy, 0 stopping)",
        "queued": "3",
        "requests": "accepted=120 handler_errors=4 ok=110",
    }
    # Values start in one column.
    value_starts = {
        line.index(v) for line, v in zip(head.splitlines(), fields.values(), strict=True)
    }
    assert value_starts == {len("instances  ")}
    assert rest.startswith(render_functions([hello_status(), resize_status()]).split("\n")[0])
    assert "hello" in rest and "resize-image: last start failed" in rest


def test_render_status_shows_draining() -> None:
    assert "\nstate      draining\n" in render_status(node_status(draining=True))


def test_render_status_tolerates_a_bare_reply() -> None:
    text = render_status({"draining": False, "counters": {}})
    fields = dict(line.split(None, 1) for line in text.partition("\n\n")[0].splitlines())
    assert fields["node"] == "-" and fields["uptime"] == "-" and fields["http"] == "-"
    assert fields["state"] == "serving"
    assert fields["requests"] == "none yet"
    assert text.endswith("\n\nno functions configured")
