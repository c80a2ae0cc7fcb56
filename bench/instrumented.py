"""Run ``huselet`` (this process's argv after OUT) with a Trio instrument added to its loop.

Bench tools that watch a real daemon from inside (``loop_steps``,
``wakeup_census``) share this: the daemon's own composition root calls
``trio.run``, so the instrument is added by wrapping that one call, not by a
hook in the daemon (which must not carry bench code).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import trio


def run_huselet_with(instrument: Callable[[str], trio.abc.Instrument]) -> int:
    """``argv[1]`` is the instrument's output file; the rest go to ``huselet``."""
    out = sys.argv.pop(1)
    real_run = trio.run

    def run(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("instruments", []).append(instrument(out))
        return real_run(*args, **kwargs)

    trio.run = run  # type: ignore[assignment]
    from huselet.cli import main as huselet_main

    return huselet_main()
