"""A private single-member etcd, started and supervised by the process that needs it.

``huselet central`` without ``--etcd`` uses one when the ``etcd`` binary is
installed (Debian: ``etcd-server``): honest single-host dev mode with the same
code path as a real cluster (leases, guarded transactions, watches). The tests
and the fleet bench start theirs with the same class.

The member listens on loopback only, on ports picked free at start, keeps its
data in ``data_dir`` and compacts its history automatically (revision mode),
so a long-running dev scheduler does not grow etcd without bound.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

START_TIMEOUT_S = 30.0


class EtcdNotInstalled(RuntimeError):
    """No ``etcd`` binary on PATH (install Debian's ``etcd-server``)."""


def etcd_binary() -> str | None:
    return shutil.which("etcd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateEtcd:
    """One etcd member as a child process; ``endpoint`` is its client URL."""

    def __init__(
        self,
        data_dir: Path,
        *,
        log_path: Path | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        """``tls``: (CA, certificate, key) — serve https and require client certificates."""
        binary = etcd_binary()
        if binary is None:
            raise EtcdNotInstalled("etcd is not installed (Debian package etcd-server)")
        self.binary = binary
        self.data_dir = data_dir
        self.log_path = log_path or data_dir.with_name(data_dir.name + ".log")
        self.client_port = free_port()
        self.peer_port = free_port()
        self.tls = tls
        scheme = "https" if tls else "http"
        self.endpoint = f"{scheme}://127.0.0.1:{self.client_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateEtcd:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            self.binary,
            "--name", "huselet-private",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"huselet-private={peer}",
            "--auto-compaction-mode", "revision",
            "--auto-compaction-retention", "10000",
            "--log-level", "warn",
        ]  # fmt: skip
        if self.tls is not None:
            ca, cert, key = self.tls
            args += ["--trusted-ca-file", str(ca), "--cert-file", str(cert)]
            args += ["--key-file", str(key), "--client-cert-auth"]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"etcd exited at start ({code}); see {self.log_path}")
            if self.healthy():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"etcd did not become healthy in {START_TIMEOUT_S:g} s; see {self.log_path}"
        )

    def healthy(self) -> bool:
        context = None
        if self.tls is not None:
            ca, cert, key = self.tls
            context = ssl.create_default_context(cafile=str(ca))
            context.load_cert_chain(str(cert), str(key))
        try:
            with urllib.request.urlopen(self.endpoint + "/health", timeout=1, context=context) as r:
                return b'"true"' in r.read()
        except (OSError, urllib.error.URLError):
            return False

    def pause(self) -> None:
        """SIGSTOP the member (tests: etcd unreachable without closing sockets)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.kill(self.proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> PrivateEtcd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
