"""Facts about the host the config is checked against: memory, per-user dirs, socket paths."""

from __future__ import annotations

import os
from pathlib import Path

from huselet.errors import ConfigError

# A sun_path holds 108 bytes including the terminating NUL.
MAX_UNIX_PATH = 107


def host_memory_mb() -> int:
    try:
        return max(1, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1 << 20))
    except (ValueError, OSError):
        return 1024


def per_user_dirs() -> tuple[Path, Path]:
    home = Path.home()
    state = Path(os.environ.get("XDG_STATE_HOME") or home / ".local" / "state") / "huselet"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    run = Path(runtime_dir) / "huselet" if runtime_dir else Path(f"/tmp/huselet-{os.geteuid()}")
    return state, run


def check_unix_path(key: str, path: Path) -> None:
    if len(os.fsencode(path)) > MAX_UNIX_PATH:
        raise ConfigError(
            key,
            f"{path} is too long for a Unix socket path ({len(os.fsencode(path))} bytes, "
            f"at most {MAX_UNIX_PATH}); choose a shorter directory",
        )
