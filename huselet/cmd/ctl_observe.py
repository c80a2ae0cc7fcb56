"""``huselet ctl metrics | logs | top``: the CLI side of the node's observability.

``logs`` reads a function's log ring (``--follow`` polls it with a cursor, so
nothing is missed or repeated between polls); ``top`` takes two samples per
refresh and shows rates and percentiles over that interval. All three talk to
the daemon over the admin socket only.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any

from huselet.admin.client import AdminClient
from huselet.admin.render_observe import render_log_record, render_top
from huselet.observe.top import view

FOLLOW_POLL_S = 0.5
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
CLEAR = "\x1b[H\x1b[2J"


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``5m``, ``2h``, ``1d`` → seconds; ValueError otherwise."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 2h)")
    return float(m.group(1)) * _UNIT_S[m.group(2) or "s"]


def metrics(client: AdminClient, accept: str | None) -> int:
    data = client.call("metrics", **({"accept": accept} if accept else {}))
    sys.stdout.write(data["text"])
    return 0


def logs(
    client: AdminClient,
    function: str,
    *,
    request_id: str | None,
    since_s: float | None,
    follow: bool,
    as_json: bool,
    limit: int,
) -> int:
    args: dict[str, Any] = {"function": function, "limit": limit}
    if request_id:
        args["request_id"] = request_id
    if since_s is not None:
        args["since_s"] = since_s
    while True:
        data = client.call("logs", **args)
        for entry in data["records"]:
            line = json.dumps(entry, ensure_ascii=False) if as_json else render_log_record(entry)
            print(line, flush=follow)
        if not follow:
            return 0
        args["after_seq"] = data["next_seq"]
        args.pop("since_s", None)
        time.sleep(FOLLOW_POLL_S)


def top(client: AdminClient, *, interval_s: float, as_json: bool, once: bool) -> int:
    before = client.call("top")
    while True:
        time.sleep(interval_s)
        after = client.call("top")
        frame = view(before, after)
        before = after
        if as_json:
            print(json.dumps(frame, indent=2, sort_keys=True))
            return 0
        text = render_top(frame)
        if sys.stdout.isatty() and not once:
            sys.stdout.write(CLEAR)
        print(text, flush=True)
        if once:
            return 0
        if not sys.stdout.isatty():
            print()
