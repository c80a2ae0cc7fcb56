"""The worker tags a handler's output with its request id; the daemon reads the tags.

The worker half runs in a real subprocess (its stdout is a real pipe), the
daemon half parses what came out of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

from huselet.observe.output import log_output_line


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, msg: str, **fields: Any) -> None:
        self.records.append(("info", msg, fields))

    def error(self, msg: str, **fields: Any) -> None:
        self.records.append(("error", msg, fields))


WORKER = textwrap.dedent(
    """
    import sys
    from huselet.worker import output
    print("before install")
    output.install()
    print("untagged: no request")
    with output.request("req-1"):
        print("out one")
        print("err one", file=sys.stderr)
        sys.stdout.write("partial")
        try:
            raise ValueError("boom")
        except ValueError:
            output.report_exception("req-1")
    print("after")
    """
)


def run_worker() -> list[bytes]:
    done = subprocess.run(
        [sys.executable, "-c", WORKER], capture_output=True, timeout=60, check=True
    )
    assert done.stderr == b""  # tagged stderr lines go to stdout, keeping their order
    return done.stdout.split(b"\n")[:-1]


def parse(lines: list[bytes]) -> list[tuple[str, str, dict[str, Any]]]:
    rec = Recorder()
    for line in lines:
        log_output_line(line, "stdout", {"function": "f", "instance": "f-1"}, rec, 4096)
    return rec.records


def test_lines_printed_while_serving_carry_the_request_id_in_order() -> None:
    records = parse(run_worker())
    lines = [(f.get("stream"), f.get("line"), f.get("request_id")) for _, m, f in records]
    assert lines[0] == ("stdout", "before install", None)
    assert lines[1] == ("stdout", "untagged: no request", None)
    assert lines[2] == ("stdout", "out one", "req-1")
    assert lines[3] == ("stderr", "err one", "req-1")
    # The traceback, one record, before the partial line flushed at the request's end.
    level, msg, fields = records[4]
    assert (level, msg, fields["request_id"]) == ("error", "handler raised", "req-1")
    assert fields["error"] == "ValueError: boom"
    assert fields["traceback"].startswith("Traceback (most recent call last):")
    assert "in <module>" in fields["traceback"]  # the frames, not only the error line
    assert lines[5] == ("stdout", "partial", "req-1")
    assert lines[6] == ("stdout", "after", None)
    assert len(records) == 7


def test_forged_or_broken_tags_stay_plain_output() -> None:
    forged = [
        b"\x1eH1o" + b"bad id with spaces" + b"\x1fhello",  # id fails validation
        b"\x1eH1t" + b"req-2" + b"\x1f{not json",  # traceback payload not JSON
        b"\x1eH1o" + b"no separator",
        b"\x1eH1x" + b"req-3" + b"\x1fwho",  # unknown kind
    ]
    records = parse(forged)
    assert [r[1] for r in records] == ["instance output"] * 4
    assert all("request_id" not in f for _, _, f in records)
    assert [f["line"] for _, _, f in records] == [
        line.decode() for line in forged
    ]  # kept whole: json escapes the control characters when it is logged
    json.dumps(records)  # every value is JSON-encodable


def test_a_long_traceback_keeps_its_end_within_the_line_limit() -> None:
    script = textwrap.dedent(
        """
        import sys
        from huselet.worker import output
        output.install()
        def deep(n):
            if n == 0:
                raise RuntimeError("the innermost error")
            deep(n - 1)
        with output.request("r"):
            try:
                deep(200)
            except RuntimeError:
                output.report_exception("r")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=60, check=True
    ).stdout
    (line,) = out.split(b"\n")[:-1]
    assert len(line) <= 4096
    (record,) = parse([line])
    assert record[2]["error"] == "RuntimeError: the innermost error"
