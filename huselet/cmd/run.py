"""``huselet run``: start the daemon in the foreground (systemd runs it the same way)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from huselet.cmd.common import Exit, Subparsers, describe_os_error, load_config


def add_parser(sub: Subparsers) -> None:
    """The ``run`` subcommand's arguments."""
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", "-c", help="TOML file (default: the embedded example)")
    run.add_argument("--check", action="store_true", help="validate the config and exit")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from huselet.errors import ConfigError, HuseletError
    from huselet.runtime.base import RuntimeError_
    from huselet.runtime.validate import check_runtimes

    try:
        config = load_config(args.config)
        # The runtime tables too: --check must refuse whatever run would.
        check_runtimes(config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return Exit.USAGE
    if args.check:
        print(f"config ok: {len(config.functions)} functions")
        return Exit.OK
    import trio

    from huselet.daemon import Daemon
    from huselet.log import setup_logging

    setup_logging(
        args.log_level or config.node.log_level, background=True, buffer_kb=config.log.buffer_kb
    )
    check_bytecode()
    tune_gc()

    async def main() -> None:
        await Daemon(config).run()

    status = Exit.OK
    try:
        trio.run(main)
    except* HuseletError as group:
        for err in _leaves(group):
            print(f"huselet: cannot start: {err}", file=sys.stderr)
        status = Exit.FAILURE
    except* OSError as group:
        for err in _leaves(group):
            print(f"huselet: cannot start: {describe_os_error(err)}", file=sys.stderr)
        status = Exit.FAILURE
    except* RuntimeError_ as group:
        # What only the host can refuse (isolation it lacks, a missing binary).
        for err in _leaves(group):
            print(f"huselet: cannot start: {err}", file=sys.stderr)
        status = Exit.FAILURE
    except* KeyboardInterrupt:
        pass
    return status


def check_bytecode() -> None:
    """Write the ``.pyc`` files zygotes would lack, or say once that they are missing.

    Zygotes run ``python -I -B`` and compile, at every start, each module
    without a valid ``.pyc`` (:mod:`huselet.bytecode`); the install path
    compiles them, this covers a checkout updated since. Before the event loop
    starts, so the first zygote already finds them.
    """
    from huselet.bytecode import FIX_COMMAND, ensure_compiled
    from huselet.log import get_logger

    log = get_logger("bytecode")
    try:
        compiled, stale = ensure_compiled()
    except OSError as exc:  # a package directory unreadable: a slower zygote, not a failure
        log.warning("cannot check the bytecode", error=describe_os_error(exc))
        return
    if compiled:
        log.info("bytecode written", modules=len(compiled))
    if stale:
        # PYTHONDONTWRITEBYTECODE is a choice, not a fault: say so, quietly.
        report = log.info if sys.dont_write_bytecode else log.warning
        report(
            "modules without valid bytecode: every zygote compiles them",
            modules=len(stale),
            first=str(stale[0]),
            fix=FIX_COMMAND,
        )


# The collector's young-generation threshold (CPython's default is 700). A start
# burst allocates a few hundred tracked objects per instance, most of them
# long-lived (its record, tasks, sockets): at 700 they were promoted through
# every generation and each full collection walked them all (~170 ms each with
# 2,000 instances, ~0.9 ms of the daemon's CPU per start, measured with
# gc.callbacks). At 20,000 a 2,000-instance burst sees about one full
# collection; a young collection then scans at most ~20,000 objects (~1 ms).
GC_GEN0_THRESHOLD = 20_000


def tune_gc() -> None:
    """Fewer collections, and never of what start-up made (see GC_GEN0_THRESHOLD).

    ``gc.freeze()`` moves every object alive now (modules, classes, the
    config: ~45,000) out of the collector's reach for good; they live as
    long as the process anyway, and full collections skip them from here on.
    """
    import gc

    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
    gc.collect()
    gc.freeze()


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
