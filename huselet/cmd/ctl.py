"""``huselet ctl``: talk to a running daemon over its admin socket.

The subcommands, their options, help and renderers come from the admin command
table (:mod:`huselet.admin.commands`); this module builds the argparse side of
it and runs a command: one call and its rendering, or a runner for the commands
that talk more than once (``logs``, ``top``, ``metrics``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from huselet.cmd.common import Exit, Subparsers, load_config


def _epilog() -> str:
    from huselet.admin.commands import ctl_commands

    lines = ["commands:"]
    for group, commands in ctl_commands().items():
        lines.append(f"  {group.value}:")
        lines.extend(f"    {c.name:<11} {c.help}" for c in commands)
    return "\n".join(lines)


def add_parser(sub: Subparsers) -> None:
    """The ``ctl`` subcommand: its commands and options from the admin command table."""
    ctl = sub.add_parser(
        "ctl",
        help="inspect and operate a running daemon through its admin socket",
        description="Talk to a running huselet over its admin socket.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from huselet.admin.commands import COMMANDS

    ctl.add_argument(
        "command",
        metavar="COMMAND",
        choices=[c.name for c in COMMANDS if c.group is not None],
        help="one of the commands below",
    )
    ctl.add_argument("what", nargs="?", help="logs: the function; debug: block-loop")
    ctl.add_argument("--socket", "-s", help="admin socket path")
    ctl.add_argument("--config", "-c", help="read the admin socket path from this TOML")
    ctl.add_argument("--json", action="store_true", help="machine-readable output")
    ctl.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    for command in COMMANDS:
        if not command.options:
            continue
        target: Any = ctl
        if command.option_group is not None:
            target = ctl.add_argument_group(*command.option_group)
        for option in command.options:
            target.add_argument(*option.flags, **option.kwargs)
    ctl.set_defaults(func=cmd_ctl)


def _admin_socket(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    if os.environ.get("HUSELET_ADMIN_SOCKET"):
        return Path(os.environ["HUSELET_ADMIN_SOCKET"])
    return load_config(args.config).admin.socket


def cmd_ctl(args: argparse.Namespace) -> int:
    from huselet.admin.client import AdminClient
    from huselet.admin.commands import BY_NAME, UsageError, call_for
    from huselet.admin.errors import AdminError
    from huselet.errors import ConfigError

    try:
        path = _admin_socket(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return Exit.USAGE
    command = BY_NAME[args.command]
    if command.runner is not None:
        return command.runner(args, path)
    try:
        name, call_args = call_for(command, args)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return Exit.USAGE
    try:
        data = AdminClient(path, timeout_s=args.timeout).call(name, **call_args)
    except AdminError as exc:
        print(f"huselet ctl: {exc}", file=sys.stderr)
        return Exit.FAILURE
    failed = command.failed_status_fails and data.get("status") == "failed"
    status = Exit.FAILURE if failed else Exit.OK
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return status
    assert command.render is not None, f"ctl command {command.name} has no renderer"
    print(command.render(data, args))
    return status


def ctl_observe_command(args: argparse.Namespace, path: Path) -> int:
    """``logs``, ``top``, ``metrics``: more than one call on one connection."""
    from huselet.admin.client import AdminClient
    from huselet.admin.errors import AdminError
    from huselet.cmd import ctl_observe

    if args.command != "logs" and args.what is not None:
        print(f"huselet ctl {args.command}: unexpected argument {args.what!r}", file=sys.stderr)
        return Exit.USAGE
    since_s = None
    if args.since is not None:
        try:
            since_s = ctl_observe.parse_duration(args.since)
        except ValueError as exc:
            print(f"huselet ctl logs: --since: {exc}", file=sys.stderr)
            return Exit.USAGE
    if args.interval <= 0:
        print("huselet ctl top: --interval must be positive", file=sys.stderr)
        return Exit.USAGE
    try:
        with AdminClient(path, timeout_s=args.timeout) as client:
            if args.command == "metrics":
                return ctl_observe.metrics(client, None)
            if args.command == "top":
                return ctl_observe.top(
                    client, interval_s=args.interval, as_json=args.json, once=args.once
                )
            if not args.what:
                print("huselet ctl logs: give the function: logs FUNCTION", file=sys.stderr)
                return Exit.USAGE
            return ctl_observe.logs(
                client,
                args.what,
                request_id=args.request,
                since_s=since_s,
                follow=args.follow,
                as_json=args.json,
                limit=args.limit,
            )
    except AdminError as exc:
        print(f"huselet ctl: {exc}", file=sys.stderr)
        return Exit.FAILURE
    except KeyboardInterrupt:
        return Exit.OK
