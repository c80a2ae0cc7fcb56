"""The admin command table is complete: every ctl command can be called and shown."""

from __future__ import annotations

import argparse

import pytest

from huselet.admin.commands import BY_NAME, COMMANDS, AdminCommand, UsageError, call_for
from huselet.cli import build_parser, main


def _ctl_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["ctl", *argv])


@pytest.mark.parametrize(
    "cmd", [c for c in COMMANDS if c.group is not None], ids=lambda c: str(c.name)
)
def test_every_ctl_command_reaches_a_served_command_and_a_renderer(cmd: AdminCommand) -> None:
    if cmd.runner is not None:
        assert cmd.serve is not None  # the runner calls the socket command of its own name
        return
    assert cmd.render is not None, f"{cmd.name}: nothing to show the reply with"
    argv = {"debug": ("debug", "block-loop", "--ms", "1"), "prefetch": ("prefetch", "-f", "x")}
    name, _ = call_for(cmd, _ctl_args(*argv.get(cmd.name, (cmd.name,))))
    assert BY_NAME[name].serve is not None, f"{cmd.name} calls {name!r}, which nobody serves"


def test_a_stray_argument_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unexpected argument 'x'"):
        call_for(BY_NAME["status"], _ctl_args("status", "x"))


def test_ctl_help_lists_every_group_and_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["ctl", "--help"])
    text = capsys.readouterr().out
    for cmd in COMMANDS:
        if cmd.group is not None:
            assert f"    {cmd.name:<11} {cmd.help}" in text
            assert f"  {cmd.group.value}:" in text
