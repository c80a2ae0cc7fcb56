"""Human-readable text for ``huselet ctl status | functions | instances``.

Pure functions from the admin replies (plain dicts and lists) to aligned text
columns; no I/O, no dependencies, so the CLI can print them and tests can read
them. The daemon's replies may come from an older or newer huselet: any missing
or oddly typed field shows as ``-`` instead of failing, and column order never
depends on the data, so scripts grepping a column keep working.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from huselet.dispatch.counters import FAILED_REQUESTS, PoolCounter

MISSING = "-"
COLUMN_GAP = "  "
# Instance states in lifecycle order; unknown states (a newer daemon) follow, sorted.
STATE_ORDER = ("starting", "idle", "busy", "stopping")
# Request outcomes counted as failures in the FAILED column: every counter that
# marks an accepted request answered with an error.
FAILURE_COUNTERS = FAILED_REQUESTS
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
    return "".join(ch if ch.isprintable() else (" " if ch in "\t\r\n" else "?") for ch in text)


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
    head = _key_values(pairs)
    functions = status.get("functions")
    body = render_functions(functions if isinstance(functions, list) else [])
    if "admission" in status:  # daemons before tenants do not report it
        from huselet.admin.render_tenants import render_admission

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
                counters.get(PoolCounter.ACCEPTED, zero),
                counters.get("ok", zero),
                failed,
                counters.get("rejected_queue_full", zero),
                _code(fn.get("code")),
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
                _code(inst.get("code")),
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


# --- package cache -------------------------------------------------------------


def format_bytes(value: Any) -> str:
    """``512B``, ``4.0K``, ``12.3M``, ``1.5G`` (binary units)."""
    n = _number(value)
    if n is None or n < 0:
        return MISSING
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_cache_levels(stats: Any) -> str:
    """One line of hit/miss counters per level: ``memory 12/3 disk 3/1 origin 1 fetch``."""
    s = _mapping(stats)
    memory, disk, origin = (_mapping(s.get(k)) for k in ("memory", "disk", "origin"))
    if not (memory or disk or origin):
        return MISSING
    return (
        f"memory {format_cell(memory.get('hits'))} hit {format_cell(memory.get('misses'))} miss, "
        f"disk {format_cell(disk.get('hits'))} hit {format_cell(disk.get('misses'))} miss, "
        f"origin {format_cell(origin.get('fetches'))} fetch "
        f"{format_cell(origin.get('failures'))} failed, "
        f"quarantined {format_cell(s.get('quarantined'))}"
    )


CACHE_HEADERS = ("LEVEL", "DIGEST", "SIZE", "FUNCTIONS", "LAST USE", "HITS", "PINS", "SOURCE")
CACHE_ALIGN = "<<><>>><"


def render_cache(data: Mapping[str, Any], *, now: float | None = None) -> str:
    """``huselet ctl cache``: images per level, most recently used first, then totals.

    LEVEL is ``memory`` (mapped), ``disk`` (installed) or ``origin`` (a
    configured function's image not on this node); HITS counts instance starts
    served from the image at any level; LAST USE is how long ago one started.
    """
    now = time.time() if now is None else now
    rows = []
    for image in data.get("images") or []:
        image = _mapping(image)
        hits = _mapping(image.get("hits"))
        last = _number(image.get("last_used"))
        functions = image.get("functions")
        rows.append(
            [
                image.get("level"),
                str(image.get("digest") or "")[:12],
                format_bytes(image.get("size")),
                ",".join(functions) if isinstance(functions, list) else None,
                format_duration(now - last) + " ago" if last is not None else MISSING,
                sum(_int(v) for v in hits.values()),
                image.get("pins"),
                image.get("source"),
            ]
        )
    parts = [render_table(CACHE_HEADERS, rows, align=CACHE_ALIGN) if rows else "no images"]
    budgets = _mapping(data.get("budgets"))
    stats = _mapping(data.get("stats"))
    disk, memory = _mapping(stats.get("disk")), _mapping(stats.get("memory"))
    prefetch = _mapping(data.get("prefetch"))
    pairs = [
        ("disk", f"{format_bytes(disk.get('bytes'))} of {format_bytes(budgets.get('disk_bytes'))}"),
        (
            "memory",
            f"{format_bytes(memory.get('bytes'))} of {format_bytes(budgets.get('memory_bytes'))}",
        ),
        ("levels", format_cache_levels(stats)),
        (
            "prefetch",
            f"{format_cell(prefetch.get('queued'))} queued, "
            f"{len(prefetch.get('fetching') or [])} fetching, "
            + " ".join(
                f"{format_cell(k)}={format_cell(v)}"
                for k, v in sorted(_mapping(prefetch.get("counters")).items())
            ),
        ),
    ]
    if data.get("packing"):
        pairs.append(("packing", ", ".join(format_cell(p) for p in data["packing"])))
    publish = _mapping(data.get("publish"))
    if publish:
        counters = _mapping(publish.get("counters"))
        pairs.append(
            (
                "publish",
                f"{format_cell(publish.get('directory'))} ({format_cell(publish.get('observer'))}):"
                f" {format_cell(counters.get('published'))} published,"
                f" {format_cell(counters.get('rejected'))} rejected",
            )
        )
    scrub = _mapping(data.get("scrub"))
    if scrub:
        pairs.append(
            (
                "scrub",
                f"last pass {format_duration(now - (_number(scrub.get('ended_at')) or now))} ago:"
                f" {format_cell(scrub.get('checked'))} checked,"
                f" {len(scrub.get('bad') or [])} bad",
            )
        )
    parts.append(_key_values(pairs))
    events = [e for e in data.get("events") or [] if isinstance(e, Mapping)][-10:]
    if events:
        lines = ["recent events:"]
        for e in events:
            when = _number(e.get("time"))
            age = format_duration(now - when) + " ago" if when is not None else MISSING
            what = str(e.get("digest") or e.get("name") or e.get("source") or "")[:12]
            kind = format_cell(e.get("kind"))
            lines.append(f"  {age}  {kind}  {format_cell(what)}  {_note(e.get('detail'))}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def render_prefetch(data: Mapping[str, Any]) -> str:
    """``huselet ctl prefetch``: what became of the hint."""
    line = f"{format_cell(data.get('status'))} {format_cell(data.get('digest'))}"
    if data.get("function"):
        line += f" (function {format_cell(data.get('function'))})"
    if data.get("error"):
        line += f": {_note(data.get('error'))}"
    return line


def render_scrub(data: Mapping[str, Any]) -> str:
    """``huselet ctl scrub``: the pass just run."""
    bad = [b for b in data.get("bad") or [] if isinstance(b, Mapping)]
    head = (
        f"checked {format_cell(data.get('checked'))} images"
        f" ({format_bytes(data.get('bytes'))}) in {format_cell(data.get('seconds'))}s:"
        f" {len(bad)} bad"
    )
    lines = [f"  quarantined {format_cell(b.get('digest'))}: {_note(b.get('reason'))}" for b in bad]
    return "\n".join([head, *lines])


def _counts(value: Any) -> str:
    counts = _mapping(value)
    return " ".join(f"{format_cell(k)}={format_cell(counts[k])}" for k in sorted(counts)) or "none"


def render_scheduler(data: Mapping[str, Any]) -> str:
    """``huselet ctl scheduler``: the link to the central scheduler."""
    if data.get("mode") != "fleet":
        return "standalone (no [scheduler] configured)"
    lease = _mapping(data.get("lease"))
    if lease.get("held"):
        lease_text = f"held, {format_duration(lease.get('expires_in_s'))} left"
    else:
        lease_text = "not held" if lease else MISSING
    resync = data.get("last_resync")
    if isinstance(resync, Mapping):
        resync_text = (
            f"{format_duration(resync.get('age_s'))} ago, {format_cell(resync.get('count'))}"
            f" resources ({_note(resync.get('reason'))}); {format_cell(data.get('resyncs'))} total"
        )
    else:
        resync_text = "never"
    state = format_cell(data.get("state"))
    if data.get("connected_s") is not None:
        state += f" for {format_duration(data.get('connected_s'))}"
    elif data.get("retry_in_s") is not None:
        state += f", retry in {format_duration(data.get('retry_in_s'))}"
    commands = _mapping(data.get("commands"))
    addresses = data.get("addresses")
    return _key_values(
        [
            (
                "node",
                f"{format_cell(data.get('node_id'))} (boot {format_cell(data.get('boot_id'))})",
            ),
            ("link", state),
            ("address", format_cell(data.get("address"))),
            ("addresses", " ".join(map(format_cell, addresses)) if addresses else MISSING),
            ("scheduler", format_cell(data.get("scheduler_id"))),
            ("epoch", format_cell(data.get("epoch"))),
            (
                "seq/ack",
                f"{format_cell(data.get('seq'))}/{format_cell(data.get('acked'))}"
                f" ({format_cell(data.get('unacked_frames'))} unacked,"
                f" {format_cell(data.get('pending_changes'))} changes pending)",
            ),
            ("lag", format_duration(data.get("lag_s"))),
            (
                "commands",
                f"applied up to {format_cell(data.get('cmd_applied'))}"
                f" of {format_cell(data.get('cmd_stream'))}",
            ),
            ("executed", _counts(commands.get("executed"))),
            ("failed", _counts(commands.get("failed"))),
            ("lease", lease_text),
            ("placements", format_cell(data.get("placements"))),
            ("last resync", resync_text),
            ("resources", format_cell(data.get("resources"))),
            (
                "connects",
                f"{format_cell(data.get('connects'))}"
                f" (last close: {_note(data.get('last_close'))})",
            ),
            ("errors", _counts(data.get("errors"))),
        ]
    )


def render_reload(data: Mapping[str, Any]) -> str:
    """``huselet ctl reload``: what the reload changed."""
    parts = []
    for key in ("added", "removed", "updated", "replaced", "trial", "code"):
        names = [format_cell(n) for n in data.get(key) or []]
        if names:
            # "code": functions redeployed because their code digest changed.
            parts.append(f"{'new code' if key == 'code' else key}: {', '.join(names)}")
    lines = ["reloaded: " + ("; ".join(parts) if parts else "no function changed")]
    restart = [format_cell(s) for s in data.get("restart_required") or []]
    if restart:
        lines.append(f"needs a restart to apply: [{'], ['.join(restart)}]")
    return "\n".join(lines)
