"""End to end, limits: a throttled tenant, another unaffected; source limits and CIDR lists."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

import pytest
from daemon_harness import Daemon, write_config
from support import write_package
from tenants_support import (
    ECHO,
    GLOBEX,
    SLOW,
    call,
    reason,
    signed,
)

pytestmark = pytest.mark.e2e


def test_a_throttled_tenant_gets_429_while_another_is_unaffected(daemon: Daemon) -> None:
    # slow: burst 2, then one request per 100 s.
    codes = [call(daemon, SLOW, "slow-echo").status_code for _ in range(2)]
    assert codes == [200, 200]
    results: dict[str, list[int]] = {"slow": [], "globex": []}
    stop = threading.Event()

    def flood() -> None:
        with daemon.client() as c:
            while not stop.is_set():
                target, headers, content = signed(daemon, SLOW, "slow-echo", {})
                r = c.post(target, content=content, headers=headers)
                results["slow"].append(r.status_code)

    thread = threading.Thread(target=flood)
    thread.start()
    try:
        with daemon.client() as c:
            for i in range(30):
                target, headers, content = signed(daemon, GLOBEX, "globex-echo", {"i": i})
                results["globex"].append(
                    c.post(target, content=content, headers=headers).status_code
                )
    finally:
        stop.set()
        thread.join(30)
    assert results["globex"] == [200] * 30
    assert results["slow"] and set(results["slow"]) == {429}
    r = call(daemon, SLOW, "slow-echo")
    assert r.status_code == 429 and reason(r) == "tenant_rate"
    assert int(r.headers["retry-after"]) >= 1
    assert "tenant slow" in r.json()["error"]["message"]
    # Buckets are node-wide and survive a reload.
    assert daemon.ctl("reload").returncode == 0
    assert call(daemon, SLOW, "slow-echo").status_code == 429
    status = daemon.status()["admission"]
    assert status["tenants"]["slow"]["throttled"] >= len(results["slow"])
    assert status["refusals"]["tenant_rate"]["slow"] >= 1
    assert status["tenants"]["globex"]["admitted"] >= 30


def test_open_node_limits_sources_and_applies_cidr_lists_on_reload() -> None:
    root = Path(tempfile.mkdtemp(prefix="hlt"))
    try:
        write_package(root, "echo", ECHO)
        config = write_config(root, FUNCTIONS_OPEN)
        auth = "[auth]\nsource_rate_per_s = 0.01\nsource_burst = 2\n"
        config.write_text(config.read_text().replace("[gateway]", auth + "[gateway]"))
        with Daemon(config) as d:
            codes = [d.invoke("echo", {}).status_code for _ in range(3)]
            assert codes == [200, 200, 429]
            r = d.invoke("echo", {})
            assert reason(r) == "source_rate" and int(r.headers["retry-after"]) >= 1
            denied = auth + 'deny_cidrs = ["127.0.0.0/8", "::1"]\n'
            config.write_text(config.read_text().replace(auth, denied))
            assert d.ctl("reload").returncode == 0
            r = d.invoke("echo", {})
            assert r.status_code == 403 and reason(r) == "source_denied"
            with d.client() as c:
                assert c.get("/healthz").status_code == 200  # probes stay open
            refusals = d.status()["admission"]["refusals"]
            assert refusals["source_rate"]["-"] >= 2 and refusals["source_denied"]["-"] == 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


FUNCTIONS_OPEN = """
[[functions]]
name = "echo"
package = "pkgs/echo"
handler = "main:handler"
"""
