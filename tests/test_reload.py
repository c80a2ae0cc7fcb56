"""Graceful reload (SIGHUP / ``huselet ctl reload``) against the real daemon.

Traffic keeps flowing through a reload; an invalid file is refused with its
error and the running config stays; a crash-looping function fixed on disk
gets its trial at once on reload.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import httpx
import pytest
from daemon_harness import Daemon, wait_until, write_config
from support import write_package

pytestmark = pytest.mark.e2e

ECHO = """
import os, time
def handler(event, context):
    if event.get("sleep"):
        time.sleep(event["sleep"])
    return {"pid": os.getpid(), "function": context.function_name}
"""


def function(name: str, **extra: object) -> str:
    lines = [
        "[[functions]]",
        f'name = "{name}"',
        f'package = "pkgs/{name}"',
        'handler = "main:handler"',
        "timeout_ms = 5000",
    ]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n\n"


def functions_of(d: Daemon) -> dict[str, dict]:
    out = d.ctl("functions", "--json")
    assert out.returncode == 0, out.stderr
    return {f["name"]: f for f in json.loads(out.stdout)}


def test_reload_adds_removes_and_updates_without_dropping_traffic(short_tmp: Path) -> None:
    for name in ("a", "b", "c"):
        write_package(short_tmp, name, ECHO)
    config = write_config(short_tmp, function("a", max_instances=2) + function("b"))
    with Daemon(config) as d:
        assert d.invoke("b").status_code == 200
        statuses: list[int] = []
        stop = threading.Event()

        def load() -> None:  # steady traffic to "a" across the reload
            with d.client() as c:
                while not stop.is_set():
                    statuses.append(c.post("/v1/invoke/a", json={}).status_code)

        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            assert wait_until(lambda: len(statuses) > 20, timeout=30)
            config.write_text(
                config.read_text()
                .replace(function("a", max_instances=2), function("a", max_instances=3))
                .replace(function("b"), function("c"))
            )
            d.proc.send_signal(signal.SIGHUP)
            assert wait_until(lambda: d.logs("configuration reloaded"), timeout=30)
            seen = len(statuses)
            assert wait_until(lambda: len(statuses) > seen + 20, timeout=30)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        entry = d.logs("configuration reloaded")[-1]
        assert (entry["added"], entry["removed"], entry["updated"]) == (["c"], ["b"], ["a"])
        fns = functions_of(d)
        assert set(fns) == {"a", "c"} and fns["a"]["max_instances"] == 3
        assert d.invoke_ok("c")["function"] == "c"
        gone = d.invoke("b")
        assert gone.status_code == 404 and "no function named 'b'" in gone.text
        assert d.status()["node"]["reload"]["reloads"] == 1


def test_an_invalid_file_is_refused_and_the_running_config_stays(short_tmp: Path) -> None:
    write_package(short_tmp, "a", ECHO)
    config = write_config(short_tmp, function("a"))
    with Daemon(config) as d:
        good = config.read_text()
        config.write_text(good + function("a"))  # a duplicate name
        out = d.ctl("reload")
        assert out.returncode == 1
        assert "reload_refused" in out.stderr and "duplicate function name 'a'" in out.stderr
        config.write_text(good + "[gateway\n")  # not TOML at all
        d.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: d.logs("reload refused; the running configuration stays"))
        assert d.invoke("a").status_code == 200
        reload = d.status()["node"]["reload"]
        assert reload["refused"] == 2 and reload["reloads"] == 0
        assert reload["last"]["applied"] is False


def test_changes_that_need_a_restart_are_reported_not_applied(short_tmp: Path) -> None:
    write_package(short_tmp, "a", ECHO)
    config = write_config(short_tmp, function("a"))
    with Daemon(config) as d:
        config.write_text(
            config.read_text().replace("max_body_bytes = 65536", "max_body_bytes = 1024")
        )
        out = d.ctl("reload")
        assert out.returncode == 0, out.stderr
        assert "needs a restart to apply: [gateway]" in out.stdout
        # The running limit stays: a 2 KiB body is still accepted.
        assert d.invoke("a", {"pad": "x" * 2048}).status_code == 200


def test_a_crash_loop_fixed_on_disk_gets_its_trial_on_reload(short_tmp: Path) -> None:
    write_package(short_tmp, "flaky", "raise ImportError('bad build')\n")
    extra = "[health]\nbreaker_failures = 3\nbreaker_open_ms = 60000\nbreaker_max_open_ms = 60000\n"
    config = write_config(short_tmp, function("flaky"))
    config.write_text(config.read_text() + extra)
    with Daemon(config) as d:
        for _ in range(3):
            r = d.invoke("flaky")
            assert r.status_code == 502 and "bad build" in r.text
        r = d.invoke("flaky")
        assert r.status_code == 503 and "circuit breaker is open" in r.text
        assert int(r.headers["retry-after"]) > 30  # without a reload: a minute to wait
        write_package(short_tmp, "flaky", ECHO)
        out = d.ctl("reload")
        # The fix is new code: redeployed, so a fresh pool with a closed breaker.
        assert out.returncode == 0 and "new code: flaky" in out.stdout, out.stdout + out.stderr
        r = d.invoke("flaky")
        assert r.status_code == 200, r.text
        assert functions_of(d)["flaky"]["breaker"]["state"] == "closed"


def test_a_crash_loop_fixed_outside_the_code_gets_its_trial_on_reload(short_tmp: Path) -> None:
    # The worker runs in its package directory; .git is never packed, so the
    # marker changes what the code does without changing the code's digest.
    source = "import os\nif os.path.exists('.git/broken'):\n    raise ImportError('bad env')\n"
    pkg = write_package(short_tmp, "flaky", source + ECHO)
    marker = pkg / ".git" / "broken"
    marker.parent.mkdir()
    marker.write_text("")
    extra = "[health]\nbreaker_failures = 3\nbreaker_open_ms = 60000\nbreaker_max_open_ms = 60000\n"
    config = write_config(short_tmp, function("flaky"))
    config.write_text(config.read_text() + extra)
    with Daemon(config) as d:
        for _ in range(3):
            assert d.invoke("flaky").status_code == 502
        assert d.invoke("flaky").status_code == 503
        marker.unlink()  # fixed, but not in the code: same digest, same pool
        out = d.ctl("reload")
        assert out.returncode == 0 and "trial: flaky" in out.stdout, out.stdout + out.stderr
        assert "new code" not in out.stdout
        assert d.invoke("flaky").status_code == 200


def test_debug_commands_are_refused_unless_enabled(short_tmp: Path) -> None:
    write_package(short_tmp, "a", ECHO)
    with Daemon(write_config(short_tmp, function("a"))) as d:
        out = d.ctl("debug", "block-loop", "--ms", "10")
        assert out.returncode == 1 and "debug commands are disabled" in out.stderr


def test_debug_block_loop_blocks_and_requests_are_answered_after(short_tmp: Path) -> None:
    write_package(short_tmp, "a", ECHO)
    config = write_config(short_tmp, function("a"))
    config.write_text(config.read_text() + "[admin]\ndebug_commands = true\n")
    with Daemon(config) as d:
        assert d.invoke("a").status_code == 200
        result: dict[str, httpx.Response] = {}

        def during() -> None:
            result["r"] = d.invoke("a")

        blocker = threading.Thread(target=lambda: d.ctl("debug", "block-loop", "--ms", "1500"))
        blocker.start()
        assert wait_until(lambda: d.logs("debug: blocking the event loop"), timeout=30)
        caller = threading.Thread(target=during)
        caller.start()
        blocker.join(30)
        caller.join(30)
        assert result["r"].status_code == 200
        lag = json.loads(d.ctl("health", "--json").stdout)
        loop = next(x for x in lag["loops"] if x["loop"] == "event_loop")
        assert loop["counters"].get("stalls", 0) >= 1
