"""Bounds on configuration input, applied before any key is interpreted.

A TOML file (or a function spec that arrived from the central scheduler) is
outside input: it may nest arrays 100,000 deep, hold integers of a thousand
digits or ``inf``. Everything here turns such input into a
:class:`~huselet.errors.ConfigError` naming the key path, so no
``RecursionError``, ``OverflowError`` or ``MemoryError`` reaches ``run``,
``run --check`` or a reload:

- :func:`parse_toml` — ``tomllib`` with its recursion and memory failures
  turned into typed errors, then :func:`check_structure`;
- :func:`check_structure` — an iterative walk (it cannot recurse itself)
  refusing nesting deeper than :data:`MAX_DEPTH`, integers outside 64 bits
  and non-finite floats;
- :func:`read_token` — a bearer-token file read bounded, never blocking on a
  FIFO, refused when empty.
"""

from __future__ import annotations

import math
import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huselet.errors import ConfigError

# No key of ours nests more than a few levels (functions[0].env.KEY); 32 leaves
# room for runtime plugins' own tables and keeps every later walk shallow.
MAX_DEPTH = 32
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_TOKEN_BYTES = 4096
MAX_PATH_BYTES = 4095  # PATH_MAX - 1
MAX_NAME_BYTES = 255  # NAME_MAX


def path_problem(value: str) -> str | None:
    """Why ``value`` can never name a file on Linux (too long), or None."""
    encoded = value.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_PATH_BYTES:
        return f"is longer than {MAX_PATH_BYTES} bytes"
    if any(len(part) > MAX_NAME_BYTES for part in encoded.split(b"/")):
        return f"has a component longer than {MAX_NAME_BYTES} bytes"
    return None


def parse_toml(text: str, source: object) -> dict[str, Any]:
    """``tomllib.loads`` with every failure a :class:`ConfigError` naming ``source``."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{source} is not valid TOML: {exc}") from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively.
        raise ConfigError(
            "", f"{source} nests arrays or inline tables too deeply (at most {MAX_DEPTH} levels)"
        ) from None
    except MemoryError:
        raise ConfigError("", f"{source} is too large to parse") from None
    except ValueError as exc:
        # An integer literal beyond Python's int/str digit limit (4300 digits).
        raise ConfigError("", f"{source} is not valid TOML: {exc}") from None
    check_structure(raw)
    return raw


def check_structure(raw: Mapping[str, Any], where: str = "") -> None:
    """Refuse deep nesting, integers beyond 64 bits and non-finite floats (key path named)."""
    stack: list[tuple[Any, str, int]] = [(raw, where, 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                # str() of a 5,000-digit int raises ValueError: say how long it is instead.
                raise ConfigError(
                    path, f"integer of {value.bit_length()} bits does not fit in 64 bits"
                )
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ConfigError(path, f"expected a finite number, got {value}")
        elif isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                raise ConfigError(path, f"nested more than {MAX_DEPTH} levels deep")
            if isinstance(value, dict):
                for key, item in value.items():
                    child = f"{path}.{key}" if path else str(key)
                    stack.append((item, child, depth + 1))
            else:
                for i, item in enumerate(value):
                    stack.append((item, f"{path}[{i}]", depth + 1))


def read_small_file(path: Path, limit: int, key: str, what: str) -> tuple[str, int]:
    """The UTF-8 text of the regular file ``path`` (at most ``limit`` bytes) and its mode.

    Opened non-blocking (a FIFO must not wait for a writer) and checked on the
    open descriptor, so the file checked is the file read; read bounded, so a
    runaway file (or /dev/zero) is refused, not swallowed. Every problem is a
    ConfigError for ``key`` whose message starts with ``what`` (the file's name).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise ConfigError(key, f"cannot read {what}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(key, f"{what} is not a regular file")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise ConfigError(key, f"cannot read {what}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        size = f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit} bytes"
        raise ConfigError(key, f"{what} is larger than {size}")
    try:
        return data.decode("utf-8"), mode
    except UnicodeDecodeError:
        raise ConfigError(key, f"{what} is not UTF-8") from None


def read_token(path: Path, key: str) -> str:
    """The bearer token in ``path``: a regular file, read bounded, not empty."""
    token = read_small_file(path, MAX_TOKEN_BYTES, key, str(path))[0].strip()
    if not token:
        raise ConfigError(key, f"{path} is empty")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise ConfigError(key, f"{path} must hold one token on one line (no spaces)")
    return token
