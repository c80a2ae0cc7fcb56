"""End to end, operating tenants: ctl keys/status/metrics, the signing CLI, warnings."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from daemon_harness import HUSELET, Daemon
from tenants_support import (
    ACME,
    ACME_NEW,
    GLOBEX,
    call,
)

pytestmark = pytest.mark.e2e


def test_ctl_keys_lists_ids_tenants_and_expiry_never_secrets(daemon: Daemon) -> None:
    out = daemon.ctl("keys")
    assert out.returncode == 0, out.stderr
    for key in (ACME, ACME_NEW, GLOBEX):
        assert key.key_id in out.stdout and key.secret not in out.stdout
    assert "2099-01-01T00:00:00Z" in out.stdout and "pending" in out.stdout
    data = json.loads(daemon.ctl("keys", "--json").stdout)
    assert "secret" not in json.dumps(data)
    text = daemon.ctl("status").stdout
    assert "admission: mode signed" in text and "globex" in text
    assert call(daemon, ACME, "globex-echo").status_code == 403
    assert call(daemon, GLOBEX, "globex-echo").status_code == 200  # a tenant's request count
    metrics = daemon.ctl("metrics").stdout
    assert 'huselet_admission_refusals_total{reason="forbidden_function",tenant="acme"}' in metrics
    assert 'huselet_tenant_requests_total{tenant="globex"}' in metrics
    # The first signed request's verification is always timed (1 in 16 after it).
    values = dict(
        line.rsplit(" ", 1) for line in metrics.splitlines() if line.startswith("huselet_auth_")
    )
    for step in ("signature", "body"):
        assert float(values[f'huselet_auth_verify_samples_total{{step="{step}"}}']) >= 1
        assert float(values[f'huselet_auth_verify_seconds_total{{step="{step}"}}']) > 0


def test_cli_invoke_signs_with_a_key_file_or_the_environment(daemon: Daemon, root: Path) -> None:
    key_file = root / "acme.json"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"key_id": ACME_NEW.key_id, "secret": ACME_NEW.secret}, f)
    base = [*HUSELET, "invoke", "acme-echo", "--url", daemon.url, "--data", '{"via": "cli"}']
    out = subprocess.run(
        [*base, "--key-file", str(key_file)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["event"] == {"via": "cli"}
    env = {
        **os.environ,
        "HUSELET_ACCESS_KEY_ID": GLOBEX.key_id,
        "HUSELET_SECRET_ACCESS_KEY": GLOBEX.secret,
    }
    denied = subprocess.run(base, capture_output=True, text=True, timeout=30, env=env)
    assert denied.returncode == 1 and "HTTP 403" in denied.stderr


def test_tenants_sharing_the_process_runtime_are_warned_about(daemon: Daemon) -> None:
    warned = [e for e in daemon.logs() if "does not isolate them" in str(e.get("msg"))]
    assert warned and warned[0]["functions"] == [
        "acme-echo",
        "acme-web",
        "globex-echo",
        "slow-echo",
    ]
