"""Cells and tables shared by every ``huselet ctl`` renderer.

Pure functions from loosely typed reply values to text: any missing or oddly
typed field shows as ``-`` instead of failing (the daemon may be older or newer
than the CLI), and nothing here does I/O. The per-command renderers
(:mod:`huselet.admin.render`, ``render_cache``, ``render_fleet``,
``render_observe``, ``render_tenants``) build on these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MISSING = "-"
COLUMN_GAP = "  "
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


def as_number(value: Any) -> float | None:
    """A number for arithmetic; None for anything else (a bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def format_duration(seconds: Any) -> str:
    """``4.2s``, ``42s``, ``3m05s``, ``2h03m``, ``3d04h``: short, and coarser as it grows."""
    s = as_number(seconds)
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
    value = as_number(ms)
    if value is None or value < 0:
        return MISSING
    return f"{value:.1f}ms" if value < 10 else f"{value:.0f}ms"


def note(text: Any) -> str:
    """Free text (an error message) as one cell, elided past :data:`MAX_NOTE` characters."""
    cell = format_cell(text)
    return cell if len(cell) <= MAX_NOTE else cell[: MAX_NOTE - 1] + "…"


def as_mapping(value: Any) -> Mapping[str, Any]:
    """The value if it is a mapping, else an empty one, so ``.get`` always works."""
    return value if isinstance(value, Mapping) else {}


def as_count(value: Any) -> int:
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


def key_values(pairs: Sequence[tuple[str, str]]) -> str:
    """``key  value`` lines, the values aligned in one column."""
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)}  {v}".rstrip() for k, v in pairs)


def format_bytes(value: Any) -> str:
    """``512B``, ``4.0K``, ``12.3M``, ``1.5G`` (binary units)."""
    n = as_number(value)
    if n is None or n < 0:
        return MISSING
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")
