"""Hostile configuration files (issue 11, findings 2 and 6), against the real CLI and daemon.

Each case is checked through ``huselet run --check`` and, where it matters,
``huselet run`` itself, ``huselet ctl reload`` and SIGHUP: a typed
``config error`` naming the key, exit status 2, never a traceback or a hang,
and a running daemon keeps its configuration and keeps serving.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from daemon_harness import HUSELET, Daemon, wait_until, write_config
from support import write_package

HANDLER = "def handler(event, context):\n    return {'ok': True}\n"
# What the attack pass sent: `y = ` + 100k `[` + 100k `]`.
DEEP_TOML = "y = " + "[" * 100_000 + "]" * 100_000 + "\n"


def check(config: Path, *, run: bool = False) -> subprocess.CompletedProcess[str]:
    """``huselet run [--check]``; a generous timeout only turns a hang into a failure."""
    args = [*HUSELET, "run", "--config", str(config)] + ([] if run else ["--check"])
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def assert_config_error(out: subprocess.CompletedProcess[str], message: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("config error: "), out.stderr
    assert message in out.stderr, out.stderr


@pytest.fixture
def root(short_tmp: Path) -> Path:
    write_package(short_tmp, "hello", HANDLER)
    return short_tmp


FUNCTION = """
[[functions]]
name = "hello"
package = "pkgs/hello"
handler = "main:handler"
"""


def test_deeply_nested_toml_is_a_config_error_for_check_and_run(root: Path) -> None:
    config = root / "deep.toml"
    config.write_text(DEEP_TOML)
    for run in (False, True):
        assert_config_error(check(config, run=run), "nests arrays or inline tables too deeply")
    # Shallow enough for tomllib, still deeper than any key of ours.
    config.write_text("y = " + "[" * 40 + "]" * 40 + "\n")
    assert_config_error(check(config), "y" + "[0]" * 31 + ": nested more than 32 levels deep")


def test_a_deep_file_on_reload_and_sighup_is_refused_and_the_daemon_serves_on(root: Path) -> None:
    config = write_config(root, FUNCTION)
    good = config.read_text()
    with Daemon(config) as d:
        assert d.invoke("hello").status_code == 200
        config.write_text(good + DEEP_TOML)
        out = d.ctl("reload")
        assert out.returncode == 1, (out.stdout, out.stderr)
        assert "too deeply" in out.stderr and "internal" not in out.stderr, out.stderr
        d.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: d.status()["node"]["reload"]["refused"] == 2, timeout=30)
        assert d.proc.poll() is None, "SIGHUP with a deep file ended the daemon"
        assert d.invoke("hello").status_code == 200
        assert not any("Traceback" in line for line in d.lines)
        # A bad [runtimes] table is refused too: the restart it needs would fail.
        config.write_text(good + "\n[runtimes.fork]\nuid_base = 0\n")
        out = d.ctl("reload")
        assert out.returncode == 1 and "runtimes.fork.uid_base" in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[runtimes.fork]\nuid_base = 0\n", "runtimes.fork.uid_base: expected an integer ≥ 1000"),
        ("[runtimes.fork]\npids_max = 1\n", "runtimes.fork.pids_max: expected an integer ≥ 8"),
        ('[runtimes.fork]\ncgroup_parent = "../../x"\n', "runtimes.fork.cgroup_parent"),
        ("[runtimes.fork]\nuid_bsae = 300000\n", "runtimes.fork.uid_bsae: unknown key"),
        ("[runtimes.bwrap]\nnetwork = 1\n", "runtimes.bwrap.network: expected one of"),
        ("[runtimes.process]\nisolaton = true\n", "runtimes.process.isolaton: unknown key"),
    ],
)
def test_runtime_tables_are_checked_by_check_exactly_as_run(
    root: Path, extra: str, message: str
) -> None:
    config = write_config(root, FUNCTION + "\n" + extra)
    assert_config_error(check(config), message)
    assert_config_error(check(config, run=True), message)


def test_function_and_gateway_values_out_of_bounds(root: Path) -> None:
    cases = {
        "memory_mb = 4611686018427387904": "memory_mb: 4611686018427387904 is over the maximum",
        "max_queue = 99999999999999999999999": "functions[0].max_queue: integer of 77 bits",
        "timeout_ms = inf": "expected a finite number",
    }
    for line, message in cases.items():
        config = write_config(root, FUNCTION + line + "\n")
        assert_config_error(check(config), message)


def test_empty_token_file_and_root_publish_dir_are_refused(root: Path) -> None:
    token = root / "token"
    token.write_text("  \n")
    config = write_config(root, FUNCTION)
    text = config.read_text().replace("[gateway]\n", f'[gateway]\nauth_token_file = "{token}"\n')
    config.write_text(text)
    assert_config_error(check(config), f"gateway.auth_token_file: {token} is empty")
    for publish in ("/", "/etc", str(root)):
        config = write_config(root, FUNCTION + f'\n[cache]\npublish_dir = "{publish}"\n')
        assert_config_error(check(config), "cache.publish_dir:")


def test_an_image_that_is_a_fifo_never_hangs_check_or_run(root: Path) -> None:
    fifo = root / "app.hlimg"
    os.mkfifo(fifo)
    config = write_config(
        root, '[[functions]]\nname = "f"\nimage = "app.hlimg"\nhandler = "main:handler"\n'
    )
    for run in (False, True):
        assert_config_error(check(config, run=run), "is a FIFO, not a regular file")
