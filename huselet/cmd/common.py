"""What every ``huselet`` subcommand shares: exit codes, reading the config, OS errors in words."""

from __future__ import annotations

import argparse
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from huselet.config import Config

# What ``add_subparsers`` returns: each subcommand module adds its parser to it.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class Exit(IntEnum):
    """The exit codes of every ``huselet`` command."""

    OK = 0
    FAILURE = 1  # a runtime failure
    USAGE = 2  # a usage or configuration error
    BROKEN_PIPE = 141  # 128 + SIGPIPE, what a C tool killed by it reports


def load_config(path: str | None) -> Config:
    """The node config from ``path`` (default: the embedded example), runtimes known."""
    from huselet.config import load_config as read_config
    from huselet.runtime import available_runtimes

    return read_config(Path(path) if path else None, known_runtimes=available_runtimes().keys())


def describe_os_error(exc: BaseException) -> str:
    """``No such file or directory (/x)`` rather than ``[Errno 2] …``."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)
