"""End to end: the real daemon as a subprocess, a real HTTP client, real
``huselet ctl``, real worker processes. One daemon per module for the
read-mostly tests; tests that kill or drain start their own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from daemon_harness import HUSELET, Daemon, pid_alive, wait_until, write_config
from support import GATE_WAIT, open_gate, write_package

pytestmark = pytest.mark.e2e

FUNCTIONS = """
[[functions]]
name = "echo"
package = "pkgs/echo"
handler = "main:handler"
memory_mb = 128
timeout_ms = 60000
max_instances = 4
max_queue = 200

[[functions]]
name = "tiny"
package = "pkgs/echo"
handler = "main:handler"
max_instances = 1
max_queue = 1
timeout_ms = 60000

[[functions]]
name = "broken"
package = "pkgs/broken"
handler = "main:handler"
"""

ECHO = (
    GATE_WAIT
    + """
import os, time
def handler(event, context):
    if isinstance(event, dict):
        if event.get("sleep"):
            time.sleep(event["sleep"])
        if event.get("gate"):  # held until the test opens the gate, or for "hold" s
            # (a sandbox that cannot see the host's files waits out the hold).
            wait_at_gate(event["gate"], event.get("hold", 15))
        if event.get("raise"):
            raise KeyError(event["raise"])
        if event.get("exit"):
            os._exit(event["exit"])
    return {"event": event, "pid": os.getpid(), "function": context.function_name}
"""
)


def make_root(root: Path) -> Path:
    write_package(root, "echo", ECHO)
    write_package(
        root, "broken", "raise RuntimeError('no config')\ndef handler(e, c):\n    return 1\n"
    )
    return root


@pytest.fixture(scope="module")
def daemon(module_short_tmp: Path) -> Iterator[Daemon]:
    root = make_root(module_short_tmp)
    with Daemon(write_config(root, FUNCTIONS)) as d:
        yield d


@pytest.fixture
def own_root(short_tmp: Path) -> Path:
    return make_root(short_tmp)


def test_invoke_over_http_and_cli(daemon: Daemon) -> None:
    r = daemon.invoke("echo", {"name": "x"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert len(r.headers["x-huselet-request-id"]) >= 8
    assert r.json()["event"] == {"name": "x"} and r.json()["function"] == "echo"
    out = subprocess.run(
        [*HUSELET, "invoke", "echo", "--data", '{"via": "cli"}', "--url", daemon.url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["event"] == {"via": "cli"}
    with daemon.client() as c:
        raw = c.post(
            "/v1/invoke/echo",
            content=b"\x01\x02",
            headers={"content-type": "application/octet-stream"},
        )
    assert (
        raw.status_code == 502 and raw.json()["error"]["type"] == "InvalidResult"
    )  # bytes inside a dict


def test_healthz(daemon: Daemon) -> None:
    with daemon.client() as c:
        r = c.get("/healthz")
    assert r.status_code == 200 and "x-huselet-request-id" in r.headers


def test_error_statuses(daemon: Daemon) -> None:
    with daemon.client() as c:
        bad_json = c.post(
            "/v1/invoke/echo", content=b"{nope", headers={"content-type": "application/json"}
        )
        assert (
            bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]["message"]
        )
        assert (
            c.post("/v1/invoke/echo", json={}, headers={"x-huselet-timeout-ms": "soon"}).status_code
            == 400
        )
        assert c.post("/v1/invoke/nope", json={}).status_code == 404
        assert c.post("/v1/invoke/echo", content=b"x" * 70000).status_code == 413
        raised = c.post("/v1/invoke/echo", json={"raise": "missing"})
        assert raised.status_code == 502
        err = raised.json()["error"]
        assert (
            err["type"] == "KeyError"
            and err["code"] == "handler_error"
            and "missing" in err["message"]
        )
        assert "/" not in err["message"] and "Traceback" not in raised.text
        # Sleeps far past the deadline: a loop stalled for seconds on a loaded
        # machine must not see the handler finish first (a 200, not the 504).
        slow = c.post(
            "/v1/invoke/echo", json={"sleep": 30}, headers={"x-huselet-timeout-ms": "200"}
        )
        assert slow.status_code == 504, slow.text
        # The instance stuck on that request was killed; the next request works.
        assert c.post("/v1/invoke/echo", json={}).status_code == 200
        broken = c.post("/v1/invoke/broken", json={})
        assert (
            broken.status_code == 502 and broken.json()["error"]["code"] == "instance_start_failed"
        )
        assert "RuntimeError" in broken.json()["error"]["message"]


def test_queue_full_is_429(daemon: Daemon) -> None:
    # tiny: one instance, one queue slot. Keep it busy (held at a gate, not for
    # a time a loaded machine might outlast), fill the slot, then overflow.
    # The gate is in the instance's own private /tmp, which the test (root)
    # reaches through /proc/PID/root: a host path is invisible in the sandbox.
    gate = "/tmp/gate-429"
    with ThreadPoolExecutor(4) as pool:
        busy = pool.submit(daemon.invoke, "tiny", {"gate": gate, "hold": 120})
        try:
            assert wait_until(
                lambda: any(
                    f["name"] == "tiny" and f["inflight"] for f in daemon.status()["functions"]
                ),
            )
            queued = pool.submit(daemon.invoke, "tiny", {})
            assert wait_until(
                lambda: any(
                    f["name"] == "tiny" and f["queued"] for f in daemon.status()["functions"]
                ),
            )
            refused = daemon.invoke("tiny", {})
        finally:
            open_function_gate(daemon, "tiny", gate)
        assert refused.status_code == 429 and "retry-after" in refused.headers
        assert busy.result().status_code == 200 and queued.result().status_code == 200


def open_function_gate(daemon: Daemon, function: str, gate: str) -> None:
    """Create ``gate`` inside each of ``function``'s instances' private /tmp."""
    out = daemon.ctl("instances", "--json")
    assert out.returncode == 0, out.stderr
    pids = [i["pid"] for i in json.loads(out.stdout) if i["function"] == function and i["pid"]]
    assert open_gate(pids, gate), f"no instance of {function} to open {gate} in"


def test_concurrency_beyond_max_instances_all_answered(daemon: Daemon) -> None:
    with ThreadPoolExecutor(16) as pool:
        replies = list(
            pool.map(lambda i: daemon.invoke("echo", {"i": i, "sleep": 0.05}), range(64))
        )
    assert [r.status_code for r in replies] == [200] * 64
    assert sorted(r.json()["event"]["i"] for r in replies) == list(range(64))
    assert len({r.json()["pid"] for r in replies}) <= 4


def test_crashing_handler_and_sigkilled_instance(daemon: Daemon) -> None:
    crashed = daemon.invoke("echo", {"exit": 3})
    assert crashed.status_code == 502 and crashed.json()["error"]["code"] == "instance_lost"
    assert "exited with code 3" in crashed.json()["error"]["message"]
    pid = daemon.invoke_ok("echo", {})["pid"]
    gate = Path(daemon.config).parent / "gate-sigkill"  # never opened: it is killed first
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(daemon.invoke, "echo", {"gate": str(gate), "hold": 50})
        assert wait_until(
            lambda: any(
                i["state"] == "busy" for i in json.loads(daemon.ctl("instances", "--json").stdout)
            ),
        )
        for busy in json.loads(daemon.ctl("instances", "--json").stdout):
            if busy["state"] == "busy":
                os.kill(busy["pid"], signal.SIGKILL)
        reply = pending.result(timeout=60)
    assert reply.status_code == 502 and "killed by SIGKILL" in reply.json()["error"]["message"]
    assert daemon.invoke("echo", {}).status_code == 200
    assert pid  # the first instance is reused or replaced, but the node serves


def test_malformed_http_and_link_frames_do_not_hurt_the_daemon(daemon: Daemon) -> None:
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GARBAGE\x00\x01 / HTTP/9\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/invoke/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    link = Path(daemon.admin_socket).parent / "fn" / "echo.sock"
    for payload in (b"\xff\xff\xff\xff", b"\x00\x00\x00\x02\xc1\xc1", b"not even close"):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(link))
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass
    assert daemon.invoke("echo", {}).status_code == 200
    daemon.wait_for_log("instance link refused")


def test_ctl_tables_and_json(daemon: Daemon) -> None:
    daemon.invoke("echo", {})
    status = daemon.ctl("status")
    assert status.returncode == 0, status.stderr
    assert "test-node" in status.stdout and "echo" in status.stdout
    data = daemon.status()
    assert data["node"]["id"] == "test-node" and data["node"]["http"] in daemon.url
    echo = next(f for f in data["functions"] if f["name"] == "echo")
    assert echo["counters"]["ok"] >= 1 and set(echo["instances"]) >= {"idle", "busy", "starting"}
    funcs = daemon.ctl("functions")
    assert funcs.returncode == 0 and "broken" in funcs.stdout
    inst = daemon.ctl("instances")
    assert inst.returncode == 0 and "echo-" in inst.stdout
    missing = subprocess.run(
        [*HUSELET, "ctl", "status", "--socket", "/nonexistent/admin.sock"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 1 and "/nonexistent/admin.sock" in missing.stderr


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            (
                '[[functions]]\nname = "f"\npackage = "pkgs/echo"\n'
                'handler = "main:handler"\ntimeout_ms = "5s"\n'
            ),
            'config error: functions[0].timeout_ms: expected a positive integer, got "5s"',
        ),
        (
            '[[functions]]\nname = "f"\npackage = "pkgs/none"\nhandler = "main:handler"\n',
            "config error: functions[0].package: package directory",
        ),
        ('[gatway]\nhttp = "1"\n', "config error: gatway: unknown key"),
    ],
)
def test_config_errors_exit_nonzero_with_the_key_path(
    own_root: Path, toml: str, message: str
) -> None:
    config = write_config(own_root, toml)
    out = subprocess.run(
        [*HUSELET, "run", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2
    assert message in out.stderr


def test_port_in_use_is_a_clear_startup_error(own_root: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(own_root, FUNCTIONS)
        config.write_text(config.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"'))
        out = subprocess.run(
            [*HUSELET, "run", "--config", str(config)], capture_output=True, text=True, timeout=30
        )
    assert out.returncode == 1 and "cannot start" in out.stderr and "in use" in out.stderr


def test_sigterm_drains_and_speaks_the_notify_protocol(own_root: Path) -> None:
    notify_path = own_root / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(notify_path))
    receiver.settimeout(30)
    try:
        daemon = Daemon(write_config(own_root, FUNCTIONS), env={"NOTIFY_SOCKET": str(notify_path)})
        ready = receiver.recv(4096).decode()
        assert ready.startswith("READY=1\nSTATUS=serving 3 functions")
        pid = daemon.invoke_ok("echo", {})["pid"]
        result: dict[str, httpx.Response] = {}
        # Held at a gate (not asleep for a time the ctl looks below may outlast)
        # until the drain has begun and refused a newcomer.
        gate = f"/tmp/gate-{own_root.name}"
        slow = threading.Thread(
            target=lambda: result.update(r=daemon.invoke("echo", {"gate": gate, "hold": 120}))
        )
        slow.start()
        assert wait_until(
            lambda: any(
                i["state"] == "busy" for i in json.loads(daemon.ctl("instances", "--json").stdout)
            ),
        )
        busy = daemon.instance_pids()
        daemon.proc.send_signal(signal.SIGTERM)
        stopping = receiver.recv(4096).decode()
        assert stopping.startswith("STOPPING=1")
        late = daemon.invoke("echo", {})
        assert late.status_code == 503 and late.json()["error"]["code"] == "draining"
        assert open_gate(busy, gate)
        slow.join(30)
        assert result["r"].status_code == 200  # accepted before SIGTERM: completed
        assert daemon.wait(30) == 0
        assert not pid_alive(pid)
        assert not Path(daemon.admin_socket).exists()
    finally:
        receiver.close()


def test_sigkill_of_the_daemon_leaves_no_instance_behind(own_root: Path) -> None:
    daemon = Daemon(write_config(own_root, FUNCTIONS))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: daemon.invoke("echo", {"sleep": 0.2}), range(4)))
    pids = daemon.instance_pids()
    assert pids and all(pid_alive(p) for p in pids)
    daemon.proc.kill()
    daemon.wait(10)
    assert wait_until(lambda: not any(pid_alive(p) for p in pids)), "orphaned instances"
    # A new daemon on the same dirs starts over stale sockets.
    with Daemon(daemon.config) as again:
        assert again.invoke("echo", {}).status_code == 200


def test_embedded_default_uses_per_user_dirs_for_non_root(short_tmp: Path) -> None:
    """load_config(None) as an unprivileged uid, in a forked child (no exec needed)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged uid for the check")
    home = short_tmp
    os.chown(home, 65534, 65534)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            os.environ.update(HOME=str(home), XDG_RUNTIME_DIR=str(home / "rt"))
            os.environ.pop("XDG_STATE_HOME", None)
            from huselet.config import load_config
            from huselet.runtime import available_runtimes

            c = load_config(None, known_runtimes=available_runtimes().keys())
            os.write(
                write_end,
                json.dumps(
                    [str(c.node.state_dir), str(c.node.run_dir), str(c.admin.socket)]
                ).encode(),
            )
        finally:
            os._exit(0)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 4096):
        data += chunk
    os.waitpid(pid, 0)
    state, run, admin = json.loads(data)
    assert state == f"{home}/.local/state/huselet"
    assert run == f"{home}/rt/huselet" and admin == f"{home}/rt/huselet/admin.sock"


def test_systemd_unit_verifies() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed on this host")
    repo = Path(__file__).resolve().parents[2]
    unit = (repo / "systemd" / "huselet.service").read_text()
    assert "Type=notify" in unit and "KillMode=mixed" in unit
    huselet_bin = Path(shutil.which("huselet") or Path(os.sys.executable).with_name("huselet"))
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "huselet.service"
        # The unit names the installed path; verify it against this checkout's binary.
        copy.write_text(unit.replace("/opt/huselet/venv/bin/huselet", str(huselet_bin)))
        out = subprocess.run(
            ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
        )
    problems = [line for line in out.stderr.splitlines() if "huselet.service" in line]
    assert out.returncode == 0 and not problems, out.stderr


def test_watchdog_pets_reach_systemd_and_ctl_health_reports(own_root: Path) -> None:
    notify_path = own_root / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(notify_path))
    receiver.settimeout(10)
    try:
        env = {"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"}
        with Daemon(write_config(own_root, FUNCTIONS), env=env) as daemon:
            messages = [receiver.recv(4096) for _ in range(4)]
            assert messages[0].startswith(b"READY=1")
            assert messages.count(b"WATCHDOG=1") >= 2
            health = daemon.ctl("health", "--json")
            assert health.returncode == 0, health.stderr
            loops = {loop["loop"]: loop for loop in json.loads(health.stdout)["loops"]}
            assert loops["watchdog"]["state"] == "ok" and loops["watchdog"]["counters"]["pets"] >= 2
            assert "event_loop" in daemon.ctl("health").stdout
    finally:
        receiver.close()
