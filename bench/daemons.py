"""Starting a bench's daemons: spawn ``huselet run``, wait until ready, keep its log drained.

Run from a neutral directory: ``python -m`` puts the working directory first
on ``sys.path``, so a daemon started from a checkout's root imports *that*
checkout's ``huselet`` whatever its interpreter or ``PYTHONPATH`` says — a
"ref" daemon started from this checkout would be this checkout's code.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable

NEUTRAL_CWD = "/"


def spawn_ready(
    argv: list[str],
    *,
    name: str,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen[str]:
    """``argv`` (a ``huselet run`` command line) once it has logged ``huselet ready``.

    Its stderr is then read (and dropped) by a thread, as journald would: a full
    pipe would block nothing (the daemon's writer drops lines) but would change
    what is measured.
    """
    proc = subprocess.Popen(
        argv,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
        preexec_fn=preexec_fn,
        cwd=NEUTRAL_CWD,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if '"huselet ready"' in line:
            break
    else:
        raise SystemExit(f"{name}: the daemon did not start (exit status {proc.wait()})")
    stream = proc.stderr
    threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()
    return proc
