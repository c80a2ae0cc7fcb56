"""``python -m huselet.sandbox.launch``: confine this process, then become the worker.

The ``process`` runtime's path when the daemon is root. The launcher starts as
root (so a Python below ``/root`` or a package below a 0700 directory is still
reachable), applies the same per-function confinement as a ``fork`` zygote
(:func:`huselet.sandbox.confine.enter_function_sandbox`: own mount, IPC, UTS
and — unless ``network = "host"`` — network namespace; a read-only root
holding only Python and the function's code, so neither the run dir nor the
admin socket exists in it; the function's unprivileged uid with no
capabilities, ``no_new_privs``, the daemon as death signal, the seccomp
filter), and only then imports and runs the worker — no function code ever
runs with privilege. The link arrives as a descriptor the daemon dialled.

The plan is the JSON of a :class:`~huselet.sandbox.confine.SandboxPlan` in
``HUSELET_SANDBOX_PLAN`` (removed before the worker runs). A failed step
exits with code 70 and one line on stderr naming it.
"""

from __future__ import annotations

import json
import os
import sys

from huselet.sandbox.confine import (
    PLAN_ENV,
    SandboxError,
    SandboxPlan,
    enter_function_sandbox,
)

# The worker (and what it imports) lives outside the sandbox's view of the
# host: import it while the whole file system is still visible, as a zygote does.
from huselet.worker import sdk

EXIT_CONFINE_FAILED = 70


def main() -> int:
    raw = os.environ.pop(PLAN_ENV, None)
    if raw is None:
        print(f"huselet launch: {PLAN_ENV} is not set", file=sys.stderr)
        return EXIT_CONFINE_FAILED
    try:
        plan = SandboxPlan.from_wire(json.loads(raw))
        if os.environ.get("HUSELET_IMAGE"):
            import cache.importer
            import cache.reader  # noqa: F401
        enter_function_sandbox(plan)
    except (SandboxError, ValueError, TypeError) as exc:
        print(f"huselet launch: cannot confine the worker: {exc}", file=sys.stderr)
        return EXIT_CONFINE_FAILED
    return sdk.main()


if __name__ == "__main__":
    raise SystemExit(main())
