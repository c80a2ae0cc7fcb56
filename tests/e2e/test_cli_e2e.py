"""The CLI an operator lives in: each papercut of issue 14, through the real CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import HUSELET, Daemon, write_config
from support import write_package

pytestmark = pytest.mark.e2e

HANDLER = """
def handler(event, context):
    if isinstance(event, bytes):
        return event  # raw bytes back, unchanged
    for i in range(event.get("lines", 0)):
        print(f"line {i} " + "x" * 200)
    return {"ok": True}
"""
TOKEN = "s3cret-token-for-tests"


def functions(root: Path) -> str:
    return f"""
[[functions]]
name = "echo"
package = "{root}/pkgs/app"
handler = "main:handler"
"""


@pytest.fixture
def node(short_tmp: Path) -> Any:
    write_package(short_tmp, "app", HANDLER)
    token_file = short_tmp / "token"
    token_file.write_text(TOKEN + "\n")
    config = write_config(short_tmp, functions(short_tmp))
    text = config.read_text().replace(
        "max_body_bytes = 65536", f'max_body_bytes = 65536\nauth_token_file = "{token_file}"'
    )
    config.write_text(text)
    with Daemon(config) as daemon:
        yield daemon


def huselet(
    *args: str, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "HUSELET_TOKEN"}
    return subprocess.run(
        [*HUSELET, *args], capture_output=True, timeout=60, env={**full_env, **(env or {})}, **kw
    )


def test_invoke_sends_and_returns_binary_bytes_unchanged(node: Daemon, short_tmp: Path) -> None:
    payload = bytes(range(256)) * 8 + b"\xff\xfe\x00 not utf-8 \x80"
    src = short_tmp / "in.bin"
    src.write_bytes(payload)
    out = huselet(
        "invoke", "echo", "--data-binary", f"@{src}", "-c", str(node.config), "--url", node.url
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == payload  # no decoding, no replacement characters, no newline added
    dest = short_tmp / "out.bin"
    target = ["-c", str(node.config), "--url", node.url]
    out = huselet("invoke", "echo", "--data-binary", "@-", *target, "-o", str(dest), input=payload)
    assert out.returncode == 0, out.stderr
    assert dest.read_bytes() == payload and out.stdout == b""
    out = huselet(
        "invoke", "echo", "-d", '{"lines": 0}', "-c", str(node.config), "--url", node.url, "-v"
    )
    assert out.returncode == 0 and json.loads(out.stdout) == {"ok": True}
    assert b"HTTP 200" in out.stderr and b"server-timing" not in out.stdout.lower()


def test_invoke_reads_the_token_file_from_the_config(node: Daemon, short_tmp: Path) -> None:
    # The config's ingress listens on port 0 (tests): --url gives the bound address,
    # the config still gives the token file.
    ok = huselet("invoke", "echo", "-c", str(node.config), "--url", node.url)
    assert ok.returncode == 0, ok.stderr
    wrong = short_tmp / "wrong"
    wrong.write_text("not-the-token")
    denied = huselet(
        "invoke", "echo", "-c", str(node.config), "--url", node.url, "--token-file", str(wrong)
    )
    assert denied.returncode == 1 and b"HTTP 401" in denied.stderr
    # With only a URL there is no config: the documented $HUSELET_TOKEN is the fallback.
    by_env = huselet("invoke", "echo", "--url", node.url, env={"HUSELET_TOKEN": TOKEN})
    assert by_env.returncode == 0, by_env.stderr
    missing = huselet("invoke", "echo", "--token-file", str(short_tmp / "nope"), "--url", node.url)
    assert missing.returncode == 2 and b"cannot read the token file" in missing.stderr


def test_invoke_urls_keep_their_scheme(node: Daemon) -> None:
    address = node.ready_entry["http"]
    for url in (f"http://{address}", f"http://{address}/", address):
        out = huselet("invoke", "echo", "--url", url, env={"HUSELET_TOKEN": TOKEN})
        assert out.returncode == 0, (url, out.stderr)
    # https:// is spoken as TLS (which this plain-HTTP ingress cannot answer), not as
    # a host named "https".
    tls = huselet("invoke", "echo", "--url", f"https://{address}", env={"HUSELET_TOKEN": TOKEN})
    assert tls.returncode == 1
    assert f"cannot reach https://{address}".encode() in tls.stderr
    bad = huselet("invoke", "echo", "--url", "ftp://example.org")
    assert bad.returncode == 2 and b"--url must be http(s)" in bad.stderr


def test_ctl_piped_into_head_ends_quietly(node: Daemon) -> None:
    # Far more output than a pipe buffer holds, so the writer is still writing
    # when head exits.
    env = {"HUSELET_TOKEN": TOKEN}
    assert (
        huselet("invoke", "echo", "-d", '{"lines": 1500}', "--url", node.url, env=env).returncode
        == 0
    )
    command = f"{' '.join(HUSELET)} ctl logs echo --socket {node.admin_socket} | head -n 1"
    for _ in range(5):
        out = subprocess.run(
            ["bash", "-c", command + "; exit ${PIPESTATUS[0]}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.stdout.count("\n") == 1
        assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr
        assert out.returncode in (0, 141)


def test_prefetch_wait_fails_when_the_fetch_fails(node: Daemon, short_tmp: Path) -> None:
    origin = short_tmp / "empty-origin"
    origin.mkdir()
    args = ["--digest", "a" * 64, "--origin", str(origin), "--wait"]
    out = node.ctl("prefetch", *args)
    assert out.returncode == 1, out.stdout
    assert out.stdout.startswith("failed")
    as_json = node.ctl("prefetch", *args, "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["status"] == "failed"


def test_ctl_health_fits_100_columns_with_details_on_request(node: Daemon) -> None:
    narrow = node.ctl("health")
    assert narrow.returncode == 0, narrow.stderr
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 100
    assert "LOOP" in narrow.stdout and "COUNTERS" not in narrow.stdout
    wide = node.ctl("health", "--wide")
    assert "COUNTERS" in wide.stdout and "samples=" in wide.stdout
    data = json.loads(node.ctl("health", "--json").stdout)
    assert {loop["loop"] for loop in data["loops"]} >= {"event_loop", "disk", "memory"}


def test_address_in_use_names_the_address(short_tmp: Path) -> None:
    write_package(short_tmp, "app", HANDLER)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for extra, key in (
            ("", "gateway.http"),
            (f'\n[metrics]\nhttp = "127.0.0.1:{port}"\n', "metrics.http"),
        ):
            config = write_config(short_tmp, functions(short_tmp), extra)
            if key == "gateway.http":
                config.write_text(config.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
            out = huselet("run", "--config", str(config))
            assert out.returncode == 1
            assert f"{key} 127.0.0.1:{port}: Address already in use".encode() in out.stderr


def test_version_and_grouped_help() -> None:
    import huselet as package

    version = huselet("--version")
    assert version.returncode == 0
    assert version.stdout.decode().strip() == f"huselet {package.__version__}"
    help_text = huselet("ctl", "--help").stdout.decode()
    for group in ("inspect:", "observe:", "operate:", "debug:"):
        assert group in help_text
    assert "logs        a function's recent log records" in help_text
    assert "top         live table per function" in help_text
