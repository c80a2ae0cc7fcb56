"""Human-readable text for ``huselet ctl status | functions | instances | reload``.

Pure functions from the admin replies (plain dicts and lists) to aligned text
columns; no I/O, no dependencies, so the CLI can print them and tests can read
them. The daemon's replies may come from an older or newer huselet: any missing
or oddly typed field shows as ``-`` instead of failing, and column order never
depends on the data, so scripts grepping a column keep working. Cells and
tables come from :mod:`huselet.admin.render_cells`; the cache, scheduler,
observe and tenants commands have renderers of their own beside this one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from huselet.admin.render_cache import format_cache_levels
from huselet.admin.render_cells import (
    MISSING,
    as_count,
    as_mapping,
    format_bytes,
    format_cell,
    format_duration,
    format_ms,
    key_values,
    note,
    render_table,
)
from huselet.admin.render_tenants import render_admission
from huselet.dispatch.counters import FAILED_REQUESTS, PoolCounter

# Instance states in lifecycle order; unknown states (a newer daemon) follow, sorted.
STATE_ORDER = ("starting", "idle", "busy", "stopping")
# Request outcomes counted as failures in the FAILED column: every counter that
# marks an accepted request answered with an error.
FAILURE_COUNTERS = FAILED_REQUESTS


def _ordered_states(counts: Mapping[str, Any]) -> list[str]:
    known = [s for s in STATE_ORDER if s in counts]
    return known + sorted(s for s in counts if s not in STATE_ORDER)


# --- commands ----------------------------------------------------------------


def render_status(status: Mapping[str, Any]) -> str:
    """``huselet ctl status``: the node, its totals, then the functions table."""
    node = as_mapping(status.get("node"))
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

    counts = as_mapping(status.get("instances"))
    states = _ordered_states(counts)
    if states:
        total = sum(as_count(counts[s]) for s in states)
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

    pairs = [
        ("node", ident),
        ("uptime", format_duration(node.get("uptime_s"))),
        ("http", format_cell(node.get("http"))),
        ("admin", format_cell(node.get("admin_socket"))),
        ("state", state),
        ("instances", instances),
        ("queued", format_cell(status.get("queued"))),
        ("requests", requests),
    ]
    if "cache" in status:  # daemons before the package cache do not report it
        pairs.append(("cache", format_cache_levels(status.get("cache"))))
    output = node.get("output")
    if isinstance(output, Mapping):  # instance output over the rate limit
        pairs.append(
            (
                "output",
                f"{format_cell(output.get('logged_lines'))} lines logged, "
                f"{format_cell(output.get('dropped_lines'))} dropped "
                f"({format_bytes(output.get('dropped_bytes'))}), "
                f"{format_cell(output.get('truncated_lines'))} truncated",
            )
        )
    head = key_values(pairs)
    functions = status.get("functions")
    body = render_functions(functions if isinstance(functions, list) else [])
    if "admission" in status:  # daemons before tenants do not report it
        body += "\n\n" + render_admission(status.get("admission"))
    return f"{head}\n\n{body}"


FUNCTION_HEADERS = (
    "FUNCTION", "RUNTIME", "INSTANCES", "STARTING", "IDLE", "BUSY", "INFLIGHT",
    "QUEUED", "ACCEPTED", "OK", "FAILED", "REJECTED", "CODE",
)  # fmt: skip
FUNCTION_ALIGN = "<<" + ">" * 10 + "<"
CODE_CHARS = 12  # digest prefix shown for an instance's code


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
        fn = as_mapping(fn)
        counts = as_mapping(fn.get("instances"))
        live = sum(as_count(v) for v in counts.values()) if counts else None
        instances = f"{format_cell(live)}/{format_cell(fn.get('max_instances'))}"
        # Counters only appear once something happened: a present but empty map
        # means zero, an absent one means this daemon does not report them.
        counters = fn.get("counters")
        zero: int | None = 0
        if not isinstance(counters, Mapping):
            counters, zero = {}, None
        failed = (
            sum(as_count(counters.get(k)) for k in FAILURE_COUNTERS) if zero is not None else None
        )
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
                counters.get(PoolCounter.ACCEPTED, zero),
                counters.get("ok", zero),
                failed,
                counters.get("rejected_queue_full", zero),
                _code(fn.get("code")),
            ]
        )
        if fn.get("last_start_error"):
            notes.append(
                f"{format_cell(fn.get('name'))}: last start failed: {note(fn['last_start_error'])}"
            )
    table = render_table(FUNCTION_HEADERS, rows, align=FUNCTION_ALIGN)
    if notes:
        table += "\n\n" + "\n".join(notes)
    return table


INSTANCE_HEADERS = ("FUNCTION", "ID", "STATE", "PID", "AGE", "IDLE", "SERVED", "START", "CODE")
INSTANCE_ALIGN = "<<<>>>>><"


def _code(value: Any) -> str | None:
    """Digest prefixes of the code (a digest or a list of them); None when not reported."""
    digests = value if isinstance(value, list) else [value] if isinstance(value, str) else None
    if not digests:
        return None
    return ",".join(str(d)[:CODE_CHARS] for d in digests)


def render_instances(instances: Sequence[Mapping[str, Any]]) -> str:
    """``huselet ctl instances``: one row per instance, in the daemon's order.

    IDLE is how long an idle instance has waited (``-`` for other states);
    START is how long the instance took to become ready.
    """
    if not instances:
        return "no instances"
    rows = []
    for inst in instances:
        inst = as_mapping(inst)
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
                _code(inst.get("code")),
            ]
        )
    return render_table(INSTANCE_HEADERS, rows, align=INSTANCE_ALIGN)


def render_reload(data: Mapping[str, Any]) -> str:
    """``huselet ctl reload``: what the reload changed."""
    parts = []
    for key in ("added", "removed", "updated", "replaced", "trial", "code"):
        names = [format_cell(n) for n in data.get(key) or []]
        if names:
            # "code": functions redeployed because their code digest changed.
            parts.append(f"{'new code' if key == 'code' else key}: {', '.join(names)}")
    lines = ["reloaded: " + ("; ".join(parts) if parts else "no function changed")]
    packing = [format_cell(n) for n in data.get("packing") or []]
    if packing:
        lines.append(f"still packing (their new code serves once packed): {', '.join(packing)}")
    restart = [format_cell(s) for s in data.get("restart_required") or []]
    if restart:
        lines.append(f"needs a restart to apply: [{'], ['.join(restart)}]")
    return "\n".join(lines)
