"""A handler printing 200,000 lines cannot flood the daemon log (issue 11, finding 10).

The real daemon: what an instance prints beyond its lines/s and bytes/s
budget is read and dropped; the drop is counted in ``ctl status`` and
summarised in the log; a 100 kB line is cut to 4 KiB.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_harness import Daemon, function_toml, wait_until, write_config
from support import write_package

from huselet.runtime.output import MAX_LINE

pytestmark = pytest.mark.e2e

LINES = 200_000
SOURCE = f"""
def handler(event, context):
    print("L" * 100_000)
    for i in range({LINES}):
        print("line", i)
    return {{"printed": {LINES} + 1}}
"""


def _output(daemon: Daemon) -> dict:
    return daemon.status()["node"]["output"]  # type: ignore[no-any-return]


def test_a_flood_of_output_is_dropped_and_counted(short_tmp: Path) -> None:
    write_package(short_tmp, "chatty", SOURCE)
    config = write_config(short_tmp, function_toml("chatty", timeout_ms=60000))
    with Daemon(config) as daemon:
        reply = daemon.invoke("chatty", {})
        assert reply.status_code == 200, reply.text
        # Every line is accounted for once the pump has read them all.
        assert wait_until(
            lambda: _output(daemon)["logged_lines"] + _output(daemon)["dropped_lines"] >= LINES + 1,
            60,
        ), _output(daemon)
        out = _output(daemon)
        logged = [e for e in daemon.logs("instance output") if e.get("function") == "chatty"]
        assert wait_until(
            lambda: (
                len([e for e in daemon.logs("instance output") if e.get("function") == "chatty"])
                == out["logged_lines"]
            ),
            10,
        )
        assert out["dropped_lines"] > LINES // 2, out  # the budget is far below the flood
        assert out["truncated_lines"] == 1
        # Cut at MAX_LINE bytes of the raw line, of which the request tag
        # (issue 14: lines printed while serving carry their request id) takes a few.
        longest = max(len(e["line"]) for e in logged)
        assert MAX_LINE - 64 <= longest <= MAX_LINE, longest
        assert daemon.logs("instance output dropped")
        text = daemon.ctl("status")
        assert "dropped" in text.stdout, text.stdout
