"""Human-readable text for ``huselet ctl scheduler``: the node's link to the central scheduler.

Like :mod:`huselet.admin.render`: a pure function over the admin reply,
tolerant of missing or oddly typed fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from huselet.admin import render_cells
from huselet.admin.render_cells import MISSING, as_mapping, format_cell, format_duration, note


def _counts(value: Any) -> str:
    counts = as_mapping(value)
    return " ".join(f"{format_cell(k)}={format_cell(counts[k])}" for k in sorted(counts)) or "none"


def render_scheduler(data: Mapping[str, Any]) -> str:
    """``huselet ctl scheduler``: the link to the central scheduler."""
    if data.get("mode") != "fleet":
        return "standalone (no [scheduler] configured)"
    lease = as_mapping(data.get("lease"))
    if lease.get("held"):
        lease_text = f"held, {format_duration(lease.get('expires_in_s'))} left"
    else:
        lease_text = "not held" if lease else MISSING
    resync = data.get("last_resync")
    if isinstance(resync, Mapping):
        resync_text = (
            f"{format_duration(resync.get('age_s'))} ago, {format_cell(resync.get('count'))}"
            f" resources ({note(resync.get('reason'))}); {format_cell(data.get('resyncs'))} total"
        )
    else:
        resync_text = "never"
    state = format_cell(data.get("state"))
    if data.get("connected_s") is not None:
        state += f" for {format_duration(data.get('connected_s'))}"
    elif data.get("retry_in_s") is not None:
        state += f", retry in {format_duration(data.get('retry_in_s'))}"
    commands = as_mapping(data.get("commands"))
    addresses = data.get("addresses")
    return render_cells.key_values(
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
                f"{format_cell(data.get('connects'))} (last close: {note(data.get('last_close'))})",
            ),
            ("errors", _counts(data.get("errors"))),
        ]
    )
