"""Human-readable text for ``huselet ctl cache | prefetch | scrub`` and the cache line of status.

Like :mod:`huselet.admin.render`: pure functions over the admin replies,
tolerant of missing or oddly typed fields.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from huselet.admin.render_cells import (
    MISSING,
    as_count,
    as_mapping,
    as_number,
    format_bytes,
    format_cell,
    format_duration,
    key_values,
    note,
    render_table,
)


def format_cache_levels(stats: Any) -> str:
    """One line of hit/miss counters per level: ``memory 12/3 disk 3/1 origin 1 fetch``."""
    s = as_mapping(stats)
    memory, disk, origin = (as_mapping(s.get(k)) for k in ("memory", "disk", "origin"))
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
        image = as_mapping(image)
        hits = as_mapping(image.get("hits"))
        last = as_number(image.get("last_used"))
        functions = image.get("functions")
        rows.append(
            [
                image.get("level"),
                str(image.get("digest") or "")[:12],
                format_bytes(image.get("size")),
                ",".join(functions) if isinstance(functions, list) else None,
                format_duration(now - last) + " ago" if last is not None else MISSING,
                sum(as_count(v) for v in hits.values()),
                image.get("pins"),
                image.get("source"),
            ]
        )
    parts = [render_table(CACHE_HEADERS, rows, align=CACHE_ALIGN) if rows else "no images"]
    budgets = as_mapping(data.get("budgets"))
    stats = as_mapping(data.get("stats"))
    disk, memory = as_mapping(stats.get("disk")), as_mapping(stats.get("memory"))
    prefetch = as_mapping(data.get("prefetch"))
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
                for k, v in sorted(as_mapping(prefetch.get("counters")).items())
            ),
        ),
    ]
    if data.get("packing"):
        pairs.append(("packing", ", ".join(format_cell(p) for p in data["packing"])))
    publish = as_mapping(data.get("publish"))
    if publish:
        counters = as_mapping(publish.get("counters"))
        pairs.append(
            (
                "publish",
                f"{format_cell(publish.get('directory'))} ({format_cell(publish.get('observer'))}):"
                f" {format_cell(counters.get('published'))} published,"
                f" {format_cell(counters.get('rejected'))} rejected",
            )
        )
    scrub = as_mapping(data.get("scrub"))
    if scrub:
        pairs.append(
            (
                "scrub",
                f"last pass {format_duration(now - (as_number(scrub.get('ended_at')) or now))} ago:"
                f" {format_cell(scrub.get('checked'))} checked,"
                f" {len(scrub.get('bad') or [])} bad",
            )
        )
    parts.append(key_values(pairs))
    events = [e for e in data.get("events") or [] if isinstance(e, Mapping)][-10:]
    if events:
        lines = ["recent events:"]
        for e in events:
            when = as_number(e.get("time"))
            age = format_duration(now - when) + " ago" if when is not None else MISSING
            what = str(e.get("digest") or e.get("name") or e.get("source") or "")[:12]
            kind = format_cell(e.get("kind"))
            lines.append(f"  {age}  {kind}  {format_cell(what)}  {note(e.get('detail'))}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def render_prefetch(data: Mapping[str, Any]) -> str:
    """``huselet ctl prefetch``: what became of the hint."""
    line = f"{format_cell(data.get('status'))} {format_cell(data.get('digest'))}"
    if data.get("function"):
        line += f" (function {format_cell(data.get('function'))})"
    if data.get("error"):
        line += f": {note(data.get('error'))}"
    return line


def render_scrub(data: Mapping[str, Any]) -> str:
    """``huselet ctl scrub``: the pass just run."""
    bad = [b for b in data.get("bad") or [] if isinstance(b, Mapping)]
    head = (
        f"checked {format_cell(data.get('checked'))} images"
        f" ({format_bytes(data.get('bytes'))}) in {format_cell(data.get('seconds'))}s:"
        f" {len(bad)} bad"
    )
    lines = [f"  quarantined {format_cell(b.get('digest'))}: {note(b.get('reason'))}" for b in bad]
    return "\n".join([head, *lines])
