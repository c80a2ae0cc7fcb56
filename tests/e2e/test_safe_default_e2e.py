"""Safe by default (issue 11, finding 8): real daemon, real probes from a handler.

The embedded default config (only its dirs and port moved, and the probe's
code in place of ``hello``) runs functions isolated; and the ``process``
runtime, with a root daemon, confines its workers too. A handler under
either cannot read ``/etc/shadow``, write ``/etc``, reach the admin socket or
reach the host's network, and holds no capability.
"""

from __future__ import annotations

import glob
import os
import socket
import tomllib
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import Daemon
from support import write_package

from huselet.config import EMBEDDED_DEFAULT

pytestmark = pytest.mark.e2e

PROBE = r"""
import os, socket

def _try(fn):
    try:
        return fn()
    except OSError as exc:
        return f"refused: {type(exc).__name__}"

def _read_shadow():
    with open("/etc/shadow", "rb") as f:
        f.read(1)
    return "read"

def _write_etc():
    with open(f"/etc/huselet-probe-{os.getpid()}", "w") as f:
        f.write("x")
    return "written"

def _connect(family, address):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(address)
        return "connected"
    finally:
        s.close()

def _caps():
    for line in open("/proc/self/status"):
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return None

def handler(event, context):
    out = {
        "uid": os.getuid(),
        "caps": _try(_caps),
        "shadow": _try(_read_shadow),
        "etc": _try(_write_etc),
        "admin": _try(lambda: _connect(socket.AF_UNIX, event["admin"])),
    }
    for name, host in event["hosts"].items():
        out[name] = _try(lambda: _connect(socket.AF_INET, (host, event["port"])))
    return out
"""


def _toml(raw: dict[str, Any]) -> str:
    """Just enough TOML out for the default config's shape."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return str(v)

    lines: list[str] = []
    for key, body in raw.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{key}]]")
                lines += [f"{k} = {value(v)}" for k, v in item.items()]
        elif all(isinstance(v, dict) for v in body.values()) and body:
            for sub, table in body.items():
                lines.append(f"[{key}.{sub}]")
                lines += [f"{k} = {value(v)}" for k, v in table.items()]
        else:
            lines.append(f"[{key}]")
            lines += [f"{k} = {value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def _default_config(root: Path, runtime: str | None) -> Path:
    raw = tomllib.loads(EMBEDDED_DEFAULT.read_text())
    raw.setdefault("node", {}).update(
        {"id": "probe-node", "state_dir": str(root / "state"), "run_dir": str(root / "run")}
    )
    raw["gateway"]["http"] = "127.0.0.1:0"
    fn = raw["functions"][0]
    fn["package"] = str(write_package(root / "pkgs", "probe", PROBE))
    if runtime is not None:
        fn["runtime"] = runtime
    path = root / "huselet.toml"
    path.write_text(_toml(raw))
    return path


def _host_addresses() -> dict[str, str]:
    """Loopback and, if the host has one, an address of an outside interface."""
    hosts = {"loopback": "127.0.0.1"}
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: just picks a source address
        address = probe.getsockname()[0]
        if not address.startswith("127."):
            hosts["outside"] = address
    except OSError:
        pass
    finally:
        probe.close()
    return hosts


@pytest.mark.parametrize("runtime", [None, "process"], ids=["embedded-default", "process"])
def test_a_handler_under_the_default_cannot_reach_the_host(
    short_tmp: Path, runtime: str | None
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the safe default needs a root daemon (otherwise it refuses to start)")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("0.0.0.0", 0))
    listener.listen(16)
    before = set(glob.glob("/etc/huselet-probe-*"))
    try:
        with Daemon(_default_config(short_tmp, runtime)) as daemon:
            hosts = _host_addresses()
            port = listener.getsockname()[1]
            event = {"admin": daemon.admin_socket, "port": port, "hosts": hosts}
            # From the host all of these are reachable: the probes can succeed.
            assert daemon.ctl("status").returncode == 0
            for host in hosts.values():
                socket.create_connection((host, port), timeout=5).close()
            reply = daemon.invoke("hello", event)
            assert reply.status_code == 200, reply.text
            seen = reply.json()
            print(f"\n{runtime or 'default'}: {seen}")
            assert seen["uid"] != 0, seen
            assert seen["caps"] == 0 or str(seen["caps"]).startswith("refused"), seen
            for probe in ("shadow", "etc", "admin", *hosts):
                assert str(seen[probe]).startswith("refused"), (probe, seen)
    finally:
        listener.close()
        for leftover in set(glob.glob("/etc/huselet-probe-*")) - before:
            os.unlink(leftover)


@pytest.mark.parametrize(
    ("table", "reason"),
    [
        ('[runtimes.bwrap]\nbinary = "no-such-bwrap"\n', "runtimes.bwrap.binary"),
        ("[runtimes.process]\nbogus = 1\n", "runtimes.process.bogus: unknown key"),
    ],
    ids=["runtime-refuses-at-start", "runtime-table"],
)
def test_a_runtime_that_cannot_serve_refuses_the_start_in_one_line(
    short_tmp: Path, table: str, reason: str
) -> None:
    """What a refusal (e.g. a host without isolation) looks like: exit 1, one line."""
    import subprocess
    import sys

    from daemon_harness import write_config

    pkg = write_package(short_tmp / "pkgs", "fn", "def handler(e, c):\n    return 1\n")
    runtime = "bwrap" if "bwrap" in table else "process"
    config = write_config(
        short_tmp,
        f'{table}\n[[functions]]\nname = "f"\npackage = "{pkg}"\n'
        f'handler = "main:handler"\nruntime = "{runtime}"\n',
    )
    out = subprocess.run(
        [sys.executable, "-m", "huselet", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stderr[-2000:]
    assert f"huselet: cannot start: {reason}" in out.stderr
    assert "Traceback" not in out.stderr
