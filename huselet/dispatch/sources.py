"""Where a deployed function came from: the node's config file or the central scheduler.

Reload and the fleet both branch on it (the file may not take over a function
the scheduler deployed, and the other way round), so it is an enum, not a word
repeated in several modules. Its value is what status and the central scheduler see.
"""

from __future__ import annotations

from enum import StrEnum


class CodeSource(StrEnum):
    CONFIG = "config"  # the node's TOML file (start or reload)
    SCHEDULER = "scheduler"  # the central scheduler's deploy command (fleet mode)
