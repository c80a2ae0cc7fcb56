"""The admin command table: one entry per command, from which everything derives.

The daemon registers each entry's ``serve`` on the admin socket; ``huselet ctl``
builds its argparse tree, its grouped ``--help`` and its output from the same
entries. Adding a command is one entry here (``_shown``, ``_observed`` or a full
``AdminCommand``, plus the functions it names), not edits in the daemon, the CLI
and the renderers.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huselet.admin import render, render_cache
from huselet.admin.render_fleet import render_scheduler
from huselet.admin.render_observe import render_health
from huselet.admin.render_tenants import render_keys

if TYPE_CHECKING:
    from huselet.daemon import Daemon


class Group(StrEnum):
    """The headings of ``huselet ctl --help``, in the order shown."""

    INSPECT = "inspect"
    OBSERVE = "observe"
    OPERATE = "operate"
    DEBUG = "debug"


class UsageError(ValueError):
    """The command line does not fit the command; the CLI prints it and exits 2."""


Args = dict[str, Any]
Serve = Callable[["Daemon", Args], Any]
Render = Callable[[Any, argparse.Namespace], str]
CallArgs = Callable[[argparse.Namespace], tuple[str, Args]]
Runner = Callable[[argparse.Namespace, Path], int]


@dataclass(frozen=True)
class Option:
    """One ``huselet ctl`` option, as passed to ``add_argument``."""

    flags: tuple[str, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AdminCommand:
    """One admin command: how the daemon serves it and how ``huselet ctl`` calls it.

    ``group`` None: served on the socket but not a ``ctl`` subcommand (``ping``,
    or the socket side of a command whose ``call`` names it). ``call`` turns the
    command line into (socket command, arguments); by default the ctl name and
    no arguments, refusing a stray positional. ``runner`` replaces call-and-render
    for commands that talk to the socket more than once (``logs --follow``, ``top``).
    """

    name: str
    help: str = ""
    group: Group | None = None
    serve: Serve | None = None
    render: Render | None = None
    options: tuple[Option, ...] = ()
    # The argparse group the options go in: (title, description); None: the main one.
    option_group: tuple[str, str] | None = None
    call: CallArgs | None = None
    runner: Runner | None = None
    # True: a reply with status "failed" exits 1 (in either output form).
    failed_status_fails: bool = False


def _plain(name: str) -> CallArgs:
    def call(args: argparse.Namespace) -> tuple[str, Args]:
        if args.what is not None:
            raise UsageError(f"huselet ctl {name}: unexpected argument {args.what!r}")
        return name, {}

    return call


def _debug_call(args: argparse.Namespace) -> tuple[str, Args]:
    if args.what != "block-loop" or args.ms is None:
        raise UsageError("huselet ctl debug: use `debug block-loop --ms N`")
    return "debug_block_loop", {"ms": args.ms}


def _reload_call(args: argparse.Namespace) -> tuple[str, Args]:
    if args.what is not None:
        raise UsageError(f"huselet ctl reload: unexpected argument {args.what!r}")
    # The daemon waits for re-packed code a little less than we wait for it,
    # so its answer arrives (with what is still packing) instead of a timeout.
    return "reload", {"wait_s": max(0.0, args.timeout - 2)}


def _prefetch_call(args: argparse.Namespace) -> tuple[str, Args]:
    if args.what is not None:
        raise UsageError(f"huselet ctl prefetch: unexpected argument {args.what!r}")
    if bool(args.function) == bool(args.digest):
        raise UsageError("huselet ctl prefetch: give --function NAME or --digest HEX")
    call_args = {
        k: v
        for k, v in {
            "function": args.function,
            "digest": args.digest,
            "origin": args.origin,
            "wait": args.wait or None,
            # The daemon waits a little less than we do, so its answer arrives.
            "timeout_s": max(1.0, args.timeout - 2) if args.wait else None,
        }.items()
        if v is not None
    }
    return "prefetch", call_args


def _observe(args: argparse.Namespace, path: Path) -> int:
    from huselet.cmd.ctl import ctl_observe_command

    return ctl_observe_command(args, path)


def _data(fn: Callable[[Any], str]) -> Render:
    """A renderer that needs only the reply."""
    return lambda data, args: fn(data)


# Compact constructors, so each table entry below is one short declaration.


def _opt(*flags: str, **kwargs: Any) -> Option:
    """An option taking a value (``add_argument`` keywords as given)."""
    return Option(flags, kwargs)


def _flag(*flags: str, help: str) -> Option:
    """An on/off option."""
    return Option(flags, {"action": "store_true", "help": help})


def _shown(
    name: str, group: Group, help: str, serve: Serve, fn: Callable[[Any], str], **more: Any
) -> AdminCommand:
    """A command called once whose reply ``fn`` turns into text."""
    return AdminCommand(name, help, group, serve=serve, render=_data(fn), **more)


def _observed(name: str, help: str, serve: Serve, **more: Any) -> AdminCommand:
    """An observe command: ``ctl`` talks to the socket more than once (``ctl_observe``)."""
    return AdminCommand(name, help, Group.OBSERVE, serve=serve, runner=_observe, **more)


# One declaration per command; kept by hand in this compact layout (the
# formatter would spread each over seven lines) so the table reads as a table.
# fmt: off
COMMANDS: tuple[AdminCommand, ...] = (
    AdminCommand("ping", serve=lambda d, a: "pong"),
    # inspect
    _shown("status", Group.INSPECT, "node summary: functions, instances, queue, counters",
           lambda d, a: d.status(), render.render_status),
    _shown("functions", Group.INSPECT, "one row per function: instances by state, queue, outcomes",
           lambda d, a: d.dispatcher.status()["functions"], render.render_functions),
    _shown("instances", Group.INSPECT, "one row per instance: state, pid, age, requests served",
           lambda d, a: d.dispatcher.instances(), render.render_instances),
    AdminCommand("health", "health loops and their state (--wide: counters, full details)",
                 Group.INSPECT, serve=lambda d, a: d.health.describe(),
                 render=lambda data, args: render_health(data, wide=args.wide),
                 options=(_flag("--wide", help="health: every column, nothing elided"),)),
    _shown("cache", Group.INSPECT, "package cache: images per level, hits, pins",
           lambda d, a: d.cache.describe(), render_cache.render_cache),
    _shown("scheduler", Group.INSPECT, "the link to the central scheduler (fleet mode)",
           lambda d, a: d.fleet.describe() if d.fleet else {"mode": "standalone"},
           render_scheduler),
    _shown("keys", Group.INSPECT, "tenants' access keys: ids, tenants, validity (never secrets)",
           lambda d, a: d.describe_keys(), render_keys),
    # observe
    _observed("metrics", "this node's Prometheus metrics (the /metrics exposition)",
              lambda d, a: d._metrics_command(a)),
    _observed("logs", "a function's recent log records: logs FUNCTION [--follow] [--request ID]",
              lambda d, a: d._logs_command(a),
              option_group=("logs", "what `huselet ctl logs FUNCTION` shows"),
              options=(
                  _flag("--follow", "-F", help="keep printing new records"),
                  _opt("--request", metavar="ID", help="only the records of this request id"),
                  _opt("--since", metavar="DURATION", help="only records newer than e.g. 5m"),
                  _opt("--limit", type=int, default=1000, help="at most this many (default 1000)"),
              )),
    _observed("top", "live table per function: req/s, p50/p99, queue, instances, errors",
              lambda d, a: d._top_command(a),
              option_group=("top", "how `huselet ctl top` refreshes"),
              options=(
                  _opt("--interval", type=float, default=1.0, help="seconds between frames"),
                  _flag("--once", help="print one frame and exit"),
              )),
    # operate
    _shown("prefetch", Group.OPERATE,
           "fetch a function's image ahead of need (--wait: until installed)",
           lambda d, a: d.cache.prefetch_command(a), render_cache.render_prefetch,
           call=_prefetch_call, failed_status_fails=True,
           option_group=("prefetch", "what `huselet ctl prefetch` fetches"),
           options=(
               _opt("--function", "-f", help="prefetch this function's image"),
               _opt("--digest", help="prefetch this image (sha256 hex)"),
               _opt("--origin", help="where the digest is (default: as known or configured)"),
               _flag("--wait", help="wait until it is installed"),
           )),
    _shown("scrub", Group.OPERATE, "verify every cached image now; quarantine bad ones",
           lambda d, a: d.cache.scrubber.scrub_now(), render_cache.render_scrub),
    _shown("reload", Group.OPERATE, "re-read the config file and apply function changes",
           lambda d, a: d._reload(a), render.render_reload, call=_reload_call),
    # debug
    AdminCommand("debug", "fault injection: debug block-loop --ms N (needs admin.debug_commands)",
                 Group.DEBUG, render=_data(json.dumps), call=_debug_call,
                 option_group=("debug", "fault injection (needs admin.debug_commands)"),
                 options=(_opt("--ms", type=int,
                               help="block-loop: how long to block the event loop"),)),
    AdminCommand("debug_block_loop", serve=lambda d, a: d._debug_block_loop(a)),
)
# fmt: on

BY_NAME: dict[str, AdminCommand] = {c.name: c for c in COMMANDS}
if len(BY_NAME) != len(COMMANDS):  # pragma: no cover - a table edit gone wrong
    raise ValueError("two admin commands share a name")


def ctl_commands() -> dict[Group, list[AdminCommand]]:
    """The ``huselet ctl`` subcommands by group, in table order."""
    out: dict[Group, list[AdminCommand]] = {group: [] for group in Group}
    for command in COMMANDS:
        if command.group is not None:
            out[command.group].append(command)
    return out


def call_for(command: AdminCommand, args: argparse.Namespace) -> tuple[str, Args]:
    """(socket command, arguments) for a ctl command line; UsageError when it does not fit."""
    return (command.call or _plain(command.name))(args)
