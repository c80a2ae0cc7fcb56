"""Run the reference central scheduler (``python -m huselet.central``) as a subprocess,
and write node configs that point at it. Companion of :mod:`daemon_harness`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
from support import free_port

START_TIMEOUT_S = 20.0


def scheduler_table(node_id: str, ports: list[int], **extra: Any) -> str:
    """A ``[scheduler]`` table for ``write_config(..., extra=...)``."""
    addresses = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
    lines = [
        "[scheduler]",
        f"addresses = [{addresses}]",
        f'node_id = "{node_id}"',
        *(f"{k} = {json.dumps(v)}" for k, v in extra.items()),
    ]
    return "\n".join(lines) + "\n"


ADMIN_TOKEN = "test-admin-token-0123456789"


class Central:
    """One central scheduler process; its stderr is collected on a thread.

    With ``etcd`` (endpoint URLs) it runs in HA mode against that cluster;
    otherwise in dev mode on ``state_dir``. Its admin token is ``ADMIN_TOKEN``.
    """

    def __init__(self, name: str, state_dir: Path, *args: str, etcd: str | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.admin_port = free_port()
        self.lines: list[str] = []
        self._standby = threading.Event()
        self.leader = threading.Event()
        self.stepped_down = threading.Event()
        self.epochs: list[int] = []
        state_dir.mkdir(parents=True, exist_ok=True)
        token_file = state_dir / f"admin-token-{name}"
        token_file.write_text(ADMIN_TOKEN + "\n")
        store = ["--etcd", etcd] if etcd else ["--state-dir", str(state_dir)]
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "huselet.central", "--id", name,
                "--listen", f"127.0.0.1:{self.port}",
                "--admin", f"127.0.0.1:{self.admin_port}",
                "--admin-token-file", str(token_file),
                *store, *args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._standby.wait(START_TIMEOUT_S):
            self.kill()
            raise AssertionError(f"{name} did not start:\n" + "\n".join(self.lines[-20:]))
        self.url = f"http://127.0.0.1:{self.admin_port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if '"central standby"' in line:
                self._standby.set()
            elif '"central leader"' in line:
                try:
                    self.epochs.append(int(json.loads(line).get("epoch", 0)))
                except ValueError:
                    pass
                self.leader.set()
            elif '"central stepped down"' in line:
                self.stepped_down.set()
        self._standby.set()

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {ADMIN_TOKEN}"}

    def get(self, path: str) -> Any:
        r = httpx.get(self.url + path, timeout=10, headers=self.headers)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: Any, timeout: float = 30) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=timeout, headers=self.headers)

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process dies only when resumed
            except ProcessLookupError:
                pass
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
