"""``ctl keys`` and the tenants part of ``ctl status``: plain text tables.

Kept apart from :mod:`huselet.admin.render` (the node's tables) but built on
its helpers; never shows a secret because the daemon never sends one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from huselet.admin.render_cells import format_cell, render_table


def render_keys(data: Mapping[str, Any]) -> str:
    """Key ids, tenants, validity; then the tenants with their grants and limits."""
    mode = format_cell(data.get("mode"))
    if not data.get("keys_file"):
        return f"auth mode {mode}: no keys file (auth.keys_file) configured"
    lines = [f"auth mode {mode}, keys file {format_cell(data.get('keys_file'))}"]
    if data.get("error"):
        lines.append(f"last read refused (keys in use stay): {format_cell(data.get('error'))}")
    keys = _list(data.get("keys"))
    rows = [
        (k.get("id"), k.get("tenant"), k.get("state"), k.get("not_before"), k.get("expires"))
        for k in keys
        if isinstance(k, Mapping)
    ]
    lines += ["", render_table(("KEY", "TENANT", "STATE", "NOT BEFORE", "EXPIRES"), rows)]
    tenants = _list(data.get("tenants"))
    trows = [
        (
            t.get("name"),
            ",".join(t.get("functions") or []) or None,
            t.get("rate_per_s"),
            t.get("burst"),
            t.get("max_concurrent"),
        )
        for t in tenants
        if isinstance(t, Mapping)
    ]
    lines += [
        "",
        render_table(
            ("TENANT", "GRANTED", "RATE/S", "BURST", "MAX CONCURRENT"), trows, align="<<>>>"
        ),
    ]
    return "\n".join(lines)


def render_admission(data: Any) -> str:
    """Per-tenant rates and throttling, then refusals by reason."""
    if not isinstance(data, Mapping):
        return ""
    tenants = data.get("tenants") if isinstance(data.get("tenants"), Mapping) else {}
    mode, admitted = format_cell(data.get("mode")), format_cell(data.get("admitted"))
    parts = [f"admission: mode {mode}, admitted {admitted}"]
    if tenants:
        rows = [
            (
                name,
                t.get("rate_per_s"),
                t.get("throttled_per_s"),
                t.get("in_flight"),
                t.get("admitted"),
                t.get("throttled"),
                t.get("refused"),
                _kib(t.get("replay_cache_bytes")),
            )
            for name, t in tenants.items()
            if isinstance(t, Mapping)
        ]
        headers = (
            "TENANT",
            "REQ/S",
            "THROTTLED/S",
            "INFLIGHT",
            "ADMITTED",
            "THROTTLED",
            "REFUSED",
            "REPLAY KIB",
        )
        parts.append(render_table(headers, rows, align="<" + ">" * 7))
    refusals = data.get("refusals") if isinstance(data.get("refusals"), Mapping) else {}
    if refusals:
        cells = []
        for reason, by_tenant in refusals.items():
            if isinstance(by_tenant, Mapping):
                detail = " ".join(f"{t}={n}" for t, n in sorted(by_tenant.items()))
                cells.append(f"{reason}: {detail}")
        parts.append("refused: " + "; ".join(cells))
    return "\n".join(parts)


def _kib(value: Any) -> Any:
    """Bytes as KiB (one decimal) for the table; anything else as it is."""
    return round(value / 1024, 1) if isinstance(value, int) else value


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
