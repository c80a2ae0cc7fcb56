"""Human-readable text for ``huselet ctl health | logs | top``.

Like :mod:`huselet.admin.render`: pure functions over the admin replies,
tolerant of missing or oddly typed fields. Tables fit ``WIDTH`` columns;
details that do not fit are elided (``--wide`` or ``--json`` show them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from huselet.admin.render_cells import (
    MISSING,
    as_mapping,
    format_bytes,
    format_cell,
    render_table,
)

WIDTH = 100


def _elide(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def render_health(data: Mapping[str, Any], *, wide: bool = False) -> str:
    """The overall state, then one row per loop; narrow unless ``wide``."""
    loops = [loop for loop in data.get("loops", []) if isinstance(loop, Mapping)]
    rows = []
    for loop in loops:
        counters = as_mapping(loop.get("counters"))
        rows.append(
            [
                format_cell(loop.get("loop")),
                format_cell(loop.get("state")),
                str(loop.get("detail") or MISSING),
                str(loop.get("last_action") or MISSING),
                ", ".join(f"{k}={v}" for k, v in sorted(counters.items())) or MISSING,
            ]
        )
    head = f"health     {format_cell(data.get('state'))}\n\n"
    if wide:
        headers = ["LOOP", "STATE", "DETAIL", "LAST ACTION", "COUNTERS"]
        return head + render_table(headers, rows)
    # Narrow: LOOP and STATE whole; DETAIL and LAST ACTION share what is left.
    loop_w = max([4, *(len(r[0]) for r in rows)])
    state_w = max([5, *(len(r[1]) for r in rows)])
    room = WIDTH - loop_w - state_w - 6  # three gaps of two spaces
    action_w = min(max([11, *(len(r[3]) for r in rows)]), room // 3)
    detail_w = room - action_w
    narrow = [[r[0], r[1], _elide(r[2], detail_w), _elide(r[3], action_w)] for r in rows]
    return head + render_table(["LOOP", "STATE", "DETAIL", "LAST ACTION"], narrow)


def render_log_record(entry: Mapping[str, Any]) -> str:
    """One ring record: time, level, component, message, fields; a traceback indented."""
    skip = {"ts", "level", "component", "msg", "seq", "function", "traceback", "exc"}
    fields = " ".join(f"{k}={_value(v)}" for k, v in entry.items() if k not in skip)
    line = (
        f"{entry.get('ts', MISSING)} {str(entry.get('level', MISSING)).upper():<7} "
        f"{entry.get('component', MISSING)}: {entry.get('msg', '')}"
    )
    if fields:
        line += f"  {fields}"
    for key in ("traceback", "exc"):
        text = entry.get(key)
        if isinstance(text, str) and text:
            line += "\n" + "\n".join(f"    {t}" for t in text.splitlines())
    return line


def _value(value: Any) -> str:
    text = str(value)
    # Newlines and control characters from a function's output stay on one line.
    text = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return repr(text) if " " in text or not text else text


def _ms(value: Any) -> str:
    return MISSING if not isinstance(value, int | float) else f"{value:.1f}"


def render_top(view: Mapping[str, Any]) -> str:
    node = as_mapping(view.get("node"))
    head = (
        f"huselet top  every {format_cell(view.get('interval_s'))}s   "
        f"cpu {format_cell(node.get('cpu_percent'))}%   "
        f"rss {format_bytes(node.get('rss_bytes'))}   "
        f"lag {_ms(node.get('lag_ms'))} ms (max {_ms(node.get('max_lag_ms'))})   "
        f"instances {format_cell(node.get('instances'))}"
    )
    rows: list[Sequence[Any]] = []
    for f in view.get("functions", []):
        if not isinstance(f, Mapping):
            continue
        inst = as_mapping(f.get("instances"))
        rows.append(
            [
                _elide(str(f.get("function")), 24),
                f"{f.get('rps', 0):.1f}",
                _ms(f.get("p50_ms")),
                _ms(f.get("p99_ms")),
                format_cell(f.get("queued")),
                format_cell(f.get("inflight")),
                f"{inst.get('starting', 0)}/{inst.get('idle', 0)}/{inst.get('busy', 0)}",
                f"{f.get('cold_starts_per_s', 0):.1f}",
                f"{f.get('errors_per_s', 0):.1f}",
            ]
        )
    table = render_table(
        ["FUNCTION", "REQ/S", "P50 MS", "P99 MS", "QUEUE", "INFLIGHT", "START/IDLE/BUSY",
         "COLD/S", "ERR/S"],
        rows,
        align="<>>>>>>>>",
    )  # fmt: skip
    return f"{head}\n\n{table}"
