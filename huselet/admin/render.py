"""Human-readable text for ``huselet ctl status | functions | instances``.

Pure functions from the admin replies (plain dicts and lists) to aligned text
columns; no I/O, no dependencies, so the CLI can print them and tests can read
them. The daemon's replies may come from an older or newer huselet: any missing
or oddly typed field shows as ``-`` instead of failing, and column order never
depends on the data, so scripts grepping a column keep working.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MISSING = "-"
COLUMN_GAP = "  "
# Instance states in lifecycle order; unknown states (a newer daemon) follow, sorted.
STATE_ORDER = ("starting", "idle", "busy", "stopping")
# Request outcomes counted as failures in the FAILED column: every counter that
# marks an accepted request answered with an error.
FAILURE_COUNTERS = (
    "handler_errors",
    "bad_events",
    "deadline_exceeded",
    "instance_lost",
    "failed_start",
)
# Longest free-text value (an error message) shown before eliding the rest.
MAX_NOTE = 200


# --- cells -------------------------------------------------------------------


def format_cell(value: Any) -> str:
    """One table cell: ``-`` for nothing, no control characters that could break the layout."""
    if value is None or value == "":
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    # A newline or escape sequence in a string (an error message from a function's
    # import) would tear the table apart or repaint the operator's terminal.
    return "".join(
        ch if ch.isprintable() else (" " if ch in "\t\r\n" else "?") for ch in text
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def format_duration(seconds: Any) -> str:
    """``4.2s``, ``42s``, ``3m05s``, ``2h03m``, ``3d04h``: short, and coarser as it grows."""
    s = _number(seconds)
    if s is None or s < 0:
        return MISSING
    if s < 10:
        return f"{s:.1f}s"
    total = int(s)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"


def format_ms(ms: Any) -> str:
    value = _number(ms)
    if value is None or value < 0:
        return MISSING
    return f"{value:.1f}ms" if value < 10 else f"{value:.0f}ms"


def _note(text: Any) -> str:
    cell = format_cell(text)
    return cell if len(cell) <= MAX_NOTE else cell[: MAX_NOTE - 1] + "…"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _int(value: Any) -> int:
    """A count for arithmetic; anything that is not one counts as zero."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# --- tables ------------------------------------------------------------------


def render_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], *, align: str | None = None
) -> str:
    """Columns padded to their widest cell, separated by two spaces.

    ``align`` holds one character per column, ``<`` (left, the default) or ``>``
    (right, for numbers). Short rows are padded with ``-``; a row longer than the
    headers is a caller bug and raises ValueError rather than losing data.
    """
    ncols = len(headers)
    if align is None:
        align = "<" * ncols
    if len(align) != ncols or set(align) - {"<", ">"}:
        raise ValueError(f"align must be {ncols} characters of '<' or '>', got {align!r}")
    table = [[format_cell(h) for h in headers]]
    for row in rows:
        if len(row) > ncols:
            raise ValueError(f"row has {len(row)} cells but there are {ncols} headers")
        cells = [format_cell(c) for c in row]
        table.append(cells + [MISSING] * (ncols - len(cells)))
    widths = [max(len(r[i]) for r in table) for i in range(ncols)]
    lines = []
    for r in table:
        padded = [
            cell.rjust(width) if how == ">" else cell.ljust(width)
            for cell, width, how in zip(r, widths, align, strict=True)
        ]
        # Trailing padding of a left-aligned last column is invisible noise for diff and grep.
        lines.append(COLUMN_GAP.join(padded).rstrip())
    return "\n".join(lines)


def _key_values(pairs: Sequence[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)}  {v}".rstrip() for k, v in pairs)


def _ordered_states(counts: Mapping[str, Any]) -> list[str]:
    known = [s for s in STATE_ORDER if s in counts]
    return known + sorted(s for s in counts if s not in STATE_ORDER)


# --- commands ----------------------------------------------------------------


def render_status(status: Mapping[str, Any]) -> str:
    """``huselet ctl status``: the node, its totals, then the functions table."""
    node = _mapping(status.get("node"))
    ident = format_cell(node.get("id"))
    details = []
    if node.get("version") is not None:
        details.append(f"huselet {format_cell(node.get('version'))}")
    if node.get("pid") is not None:
        details.append(f"pid {format_cell(node.get('pid'))}")
    if details:
        ident += f" ({', '.join(details)})"

    draining = status.get("draining")
    state = MISSING if draining is None else ("draining" if draining else "serving")

    counts = _mapping(status.get("instances"))
    states = _ordered_states(counts)
    if states:
        total = sum(_int(counts[s]) for s in states)
        by_state = ", ".join(f"{format_cell(counts[s])} {format_cell(s)}" for s in states)
        instances = f"{total} ({by_state})"
    else:
        instances = MISSING

    counters = status.get("counters")
    if isinstance(counters, Mapping):
        requests = (
            " ".join(f"{format_cell(k)}={format_cell(counters[k])}" for k in sorted(counters))
            or "none yet"
        )
    else:
        requests = MISSING

    head = _key_values(
        [
            ("node", ident),
            ("uptime", format_duration(node.get("uptime_s"))),
            ("http", format_cell(node.get("http"))),
            ("admin", format_cell(node.get("admin_socket"))),
            ("state", state),
            ("instances", instances),
            ("queued", format_cell(status.get("queued"))),
            ("requests", requests),
        ]
    )
    functions = status.get("functions")
    body = render_functions(functions if isinstance(functions, list) else [])
    return f"{head}\n\n{body}"


FUNCTION_HEADERS = (
    "FUNCTION", "RUNTIME", "INSTANCES", "STARTING", "IDLE", "BUSY", "INFLIGHT",
    "QUEUED", "ACCEPTED", "OK", "FAILED", "REJECTED",
)  # fmt: skip
FUNCTION_ALIGN = "<<" + ">" * 10


def render_functions(functions: Sequence[Mapping[str, Any]]) -> str:
    """``huselet ctl functions``: one row per function, in the daemon's (config) order.

    INSTANCES is ``live/max``; FAILED sums :data:`FAILURE_COUNTERS`; REJECTED
    counts requests turned away because the queue was full. The last start
    failure of a function, if any, follows the table as a note: it is free text
    and would make the table unreadably wide.
    """
    if not functions:
        return "no functions configured"
    rows = []
    notes = []
    for fn in functions:
        fn = _mapping(fn)
        counts = _mapping(fn.get("instances"))
        live = sum(_int(v) for v in counts.values()) if counts else None
        instances = f"{format_cell(live)}/{format_cell(fn.get('max_instances'))}"
        # Counters only appear once something happened: a present but empty map
        # means zero, an absent one means this daemon does not report them.
        counters = fn.get("counters")
        zero: int | None = 0
        if not isinstance(counters, Mapping):
            counters, zero = {}, None
        failed = sum(_int(counters.get(k)) for k in FAILURE_COUNTERS) if zero is not None else None
        rows.append(
            [
                fn.get("name"),
                fn.get("runtime"),
                instances,
                counts.get("starting"),
                counts.get("idle"),
                counts.get("busy"),
                fn.get("inflight"),
                fn.get("queued"),
                counters.get("accepted", zero),
                counters.get("ok", zero),
                failed,
                counters.get("rejected_queue_full", zero),
            ]
        )
        if fn.get("last_start_error"):
            notes.append(
                f"{format_cell(fn.get('name'))}: last start failed: {_note(fn['last_start_error'])}"
            )
    table = render_table(FUNCTION_HEADERS, rows, align=FUNCTION_ALIGN)
    if notes:
        table += "\n\n" + "\n".join(notes)
    return table


INSTANCE_HEADERS = ("FUNCTION", "ID", "STATE", "PID", "AGE", "IDLE", "SERVED", "START")
INSTANCE_ALIGN = "<<<>>>>>"


def render_instances(instances: Sequence[Mapping[str, Any]]) -> str:
    """``huselet ctl instances``: one row per instance, in the daemon's order.

    IDLE is how long an idle instance has waited (``-`` for other states);
    START is how long the instance took to become ready.
    """
    if not instances:
        return "no instances"
    rows = []
    for inst in instances:
        inst = _mapping(inst)
        state = inst.get("state")
        rows.append(
            [
                inst.get("function"),
                inst.get("id"),
                state,
                inst.get("pid"),
                format_duration(inst.get("age_s")),
                format_duration(inst.get("idle_s")) if state == "idle" else MISSING,
                inst.get("served"),
                format_ms(inst.get("start_ms")),
            ]
        )
    return render_table(INSTANCE_HEADERS, rows, align=INSTANCE_ALIGN)


def render_health(data: dict[str, Any]) -> str:
    """``huselet ctl health``: the overall state, then one row per health loop."""
    rows = []
    for loop in data.get("loops", []):
        counters = ", ".join(f"{k}={v}" for k, v in sorted(loop.get("counters", {}).items()))
        rows.append(
            [
                str(loop.get("loop", "-")),
                str(loop.get("state", "-")),
                str(loop.get("detail") or "-"),
                str(loop.get("last_action") or "-"),
                counters or "-",
            ]
        )
    table = render_table(["LOOP", "STATE", "DETAIL", "LAST ACTION", "COUNTERS"], rows)
    return f"health     {data.get('state', '-')}\n\n{table}"
