"""The ``huselet`` command line: ``run``, ``ctl``, ``invoke``, ``keygen``, ``pack``, ``version``.

``huselet run`` starts the daemon (foreground; systemd runs it the same way).
``huselet ctl`` talks to a running daemon over its admin socket.
``huselet invoke`` is a convenience HTTP client for the ingress (signs with a key if given).
``huselet keygen`` makes an access key pair for a tenant.
``huselet pack DIR -o FILE`` builds a package image (deterministic).
Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error; output
cut short by a closed pipe (``| head``) ends quietly with 141, as SIGPIPE would.
This module builds the parser and runs the chosen subcommand; each subcommand's
arguments and action live in :mod:`huselet.cmd`, one module each.
"""

from __future__ import annotations

import argparse
import os
import sys

from huselet.cmd import ctl, invoke, keygen, pack, run
from huselet.cmd.common import Exit


def build_parser() -> argparse.ArgumentParser:
    """The whole ``huselet`` argparse tree; each parsed namespace carries its ``func``."""
    import huselet

    parser = argparse.ArgumentParser(prog="huselet", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"huselet {huselet.__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    # In the order ``huselet --help`` lists them.
    run.add_parser(sub)
    ctl.add_parser(sub)
    pack.add_parser(sub)
    invoke.add_parser(sub)
    keygen.add_parser(sub)

    central = sub.add_parser(
        "central",
        help="run the reference central scheduler (see `huselet central --help`)",
        add_help=False,
    )
    central.add_argument("central_args", nargs=argparse.REMAINDER)
    central.set_defaults(func=lambda args: _central(args.central_args))

    ver = sub.add_parser("version", help="print the version")
    ver.set_defaults(func=lambda args: print(__import__("huselet").__version__) or Exit.OK)
    return parser


def _central(argv: list[str]) -> int:
    from huselet.central.cli import main as central_main

    return central_main(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one ``huselet`` command line; the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["central"]:
        # Its options are its own parser's; argparse would claim them here.
        return _central(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader (head, less) is gone: stop quietly. Point stdout at /dev/null
        # so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return Exit.BROKEN_PIPE


if __name__ == "__main__":
    raise SystemExit(main())
