"""Run the real ``huselet run`` as a subprocess for end-to-end tests.

The daemon gets a temp config (HTTP on port 0), and the harness learns the
bound address from the daemon's own "huselet ready" log line. Its stderr is
collected on a thread so the pipe never fills; tests can search it, or wait
for a line with :meth:`Daemon.wait_for_log` (a log read that does not wait
races the daemon). The ``start_daemon`` fixture in conftest.py stops every
daemon a test started, whatever happens to the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import httpx
from support import WAIT_S, pid_alive, wait_until

__all__ = ["HUSELET", "Daemon", "function_toml", "pid_alive", "wait_until", "write_config"]

HUSELET = [sys.executable, "-m", "huselet"]
START_TIMEOUT_S = 30.0


def write_config(root: Path, functions: str, extra: str = "") -> Path:
    """A config under ``root`` whose [[functions]] blocks are given as TOML text."""
    config = root / "huselet.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [node]
            id = "test-node"
            state_dir = "{root}/state"
            run_dir = "{root}/run"
            drain_grace_ms = 5000
            {extra}
            [gateway]
            http = "127.0.0.1:0"
            max_body_bytes = 65536
            """
        )
        + textwrap.dedent(functions)
    )
    return config


def function_toml(name: str, package: str | None = None, **keys: bool | int | str) -> str:
    """One ``[[functions]]`` block for :func:`write_config`: ``name``, its package
    (default ``pkgs/NAME``, as ``support.write_package`` lays it out), handler
    ``main:handler``, then ``keys`` (booleans, ints, strings) in the order given."""
    lines = [
        "[[functions]]",
        f'name = "{name}"',
        f'package = "{package or f"pkgs/{name}"}"',
        'handler = "main:handler"',
    ]
    lines += [f"{k} = {_toml_value(v)}" for k, v in keys.items()]
    return "\n" + "\n".join(lines) + "\n"


def _toml_value(value: bool | int | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int) else json.dumps(value)  # JSON strings are TOML


class Daemon:
    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.ready_entry: dict[str, Any] = {}
        self._reading = threading.Event()  # cleared: the stderr reader stops reading
        self._reading.set()
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            [*HUSELET, "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=full_env,
            text=True,
        )
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self._ready.wait(START_TIMEOUT_S):
            self.kill()
            raise AssertionError("daemon did not become ready:\n" + "\n".join(self.lines[-30:]))
        self.url = f"http://{self.ready_entry['http']}"
        self.admin_socket = self.ready_entry["admin"]

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._reading.wait()
            self.lines.append(line.rstrip("\n"))
            if '"huselet ready"' in line:
                self.ready_entry = json.loads(line)
                self._ready.set()
        self._ready.set()  # EOF: unblock a waiter; it checks ready_entry

    def pause_log_reader(self) -> None:
        """Stop reading the daemon's stderr: its pipe fills, as a stalled journald's would."""
        self._reading.clear()

    def resume_log_reader(self) -> None:
        self._reading.set()

    def logs(self, msg: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if msg is None or entry.get("msg") == msg:
                out.append(entry)
        return out

    def wait_for_log(self, msg: str, timeout: float = WAIT_S, **fields: Any) -> dict[str, Any]:
        """The first entry logged as ``msg`` with these field values, waiting for it."""

        def found() -> dict[str, Any] | None:
            for entry in self.logs(msg):
                if all(entry.get(k) == v for k, v in fields.items()):
                    return entry
            return None

        if not wait_until(found, timeout):
            raise AssertionError(
                f"no {msg!r} {fields or ''} logged within {timeout} s:\n"
                + "\n".join(self.lines[-30:])
            )
        entry = found()
        assert entry is not None
        return entry

    def framed_address(self) -> str:
        """The framed ingress's TCP address (host:port), once it listens."""
        return str(self.wait_for_log("framed ingress listening")["tcp"])

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kw)

    def invoke(self, function: str, event: Any = None, **kw: Any) -> httpx.Response:
        with self.client() as c:
            return c.post(f"/v1/invoke/{function}", json=event if event is not None else {}, **kw)

    def invoke_ok(self, function: str, event: Any = None, **kw: Any) -> Any:
        """The JSON body of a 200 reply; any other reply fails with its status and body
        (read a field of an error reply and the failure says only ``KeyError``)."""
        reply = self.invoke(function, event, **kw)
        assert reply.status_code == 200, (function, reply.status_code, reply.text)
        return reply.json()

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*HUSELET, "ctl", *args, "--socket", self.admin_socket],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def status(self) -> dict[str, Any]:
        out = self.ctl("status", "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def instance_pids(self) -> list[int]:
        out = self.ctl("instances", "--json")
        assert out.returncode == 0, out.stderr
        return [i["pid"] for i in json.loads(out.stdout) if i["pid"]]

    def zygote_pids(self) -> set[int]:
        """The daemon's fork zygotes: its children running the zygote module.

        Its instances are its children too (cloned with CLONE_PARENT, so they
        carry the zygote's command line): they are left out."""
        found = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if ppid == self.proc.pid and b"huselet.sandbox.zygote" in cmdline:
                found.add(int(entry.name))
        return found - set(self.instance_pids())

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self._reading.set()  # a paused reader would leave the daemon's last lines unread
        if self.proc.poll() is None:
            try:
                self.terminate(30)
            except subprocess.TimeoutExpired:
                self.kill()
