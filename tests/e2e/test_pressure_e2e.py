"""Resource pressure through the real daemon: a state dir on a small tmpfs filled
up (new images refused, unused ones evicted, warm functions keep serving, recovery
once the filler is gone), and a tiny memory budget (starts held with a clear 503,
idle instances reaped until the budget is met again). Everything the operator
sees is read back from ``huselet ctl health`` / ``ctl cache`` and the log."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cache_testkit import build_image, variant
from daemon_harness import Daemon, pid_alive, wait_until, write_config
from support import write_package

pytestmark = pytest.mark.e2e

WAIT_S = 15.0  # bound of every wait for the daemon to notice something


def health_loop(d: Daemon, name: str) -> dict[str, Any]:
    out = d.ctl("health", "--json")
    assert out.returncode == 0, out.stderr
    (row,) = [loop for loop in json.loads(out.stdout)["loops"] if loop["loop"] == name]
    return row


def installed(d: Daemon) -> set[str]:
    out = d.ctl("cache", "--json")
    assert out.returncode == 0, out.stderr
    return {row["digest"] for row in json.loads(out.stdout)["images"] if row["level"] != "origin"}


def healing_actions(d: Daemon, loop: str) -> list[str]:
    return [e["action"] for e in d.logs("healing action") if e.get("loop") == loop]


@pytest.fixture
def root(short_tmp: Path) -> Path:
    return short_tmp  # short: Unix socket paths must stay under 108 bytes


@pytest.fixture
def small_state_dir(root: Path) -> Iterator[Path]:
    """``root/state`` on its own 8 MiB tmpfs, unmounted afterwards whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    state = root / "state"
    state.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0750", "tmpfs", str(state)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield state
    finally:
        if subprocess.run(["umount", str(state)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(state)], capture_output=True)


def fill_until_free(directory: Path, free_percent: float) -> Path:
    """Write one file into ``directory`` so that about ``free_percent`` stays free."""
    st = os.statvfs(directory)
    target_free = int(st.f_blocks * st.f_frsize * free_percent / 100)
    size = st.f_bavail * st.f_frsize - target_free
    assert size > 0
    filler = directory / "filler.bin"
    chunk = b"\xa5" * (1 << 20)
    with open(filler, "wb") as f:
        while size > 0:
            f.write(chunk[: min(size, len(chunk))])
            size -= len(chunk)
    return filler


def test_disk_pressure_refuses_new_images_keeps_warm_ones_and_recovers(
    root: Path, small_state_dir: Path
) -> None:
    images = {tag: build_image(root, tag, variant(tag)) for tag in ("warm", "spare", "cold")}
    functions = "[health]\ndisk_interval_ms = 50\n"
    functions += "disk_enter_free_percent = 30\ndisk_leave_free_percent = 50\n"
    for tag, image in images.items():
        functions += f"""
[[functions]]
name = "{tag}"
image = "{image.path}"
handler = "main:handler"
idle_timeout_ms = 600000
"""
    with Daemon(write_config(root, functions)) as d:
        assert d.invoke_ok("warm", {"word": "a"})["reply"] == "A!warm"
        prefetched = d.ctl("prefetch", "--function", "spare", "--wait", "--json")
        assert prefetched.returncode == 0, prefetched.stderr
        assert {images["warm"].digest, images["spare"].digest} <= installed(d)
        assert wait_until(lambda: health_loop(d, "disk")["counters"].get("samples"), WAIT_S)
        assert health_loop(d, "disk")["state"] == "ok"

        filler = fill_until_free(small_state_dir, 15)
        assert wait_until(lambda: health_loop(d, "disk")["state"] == "degraded", WAIT_S)
        disk = health_loop(d, "disk")
        assert f"state dir {small_state_dir} has " in disk["detail"]
        assert "% free (needs 50%)" in disk["detail"]
        assert disk["counters"]["entered"] == 1
        assert disk["counters"]["images_evicted"] >= 1
        assert disk["last_action"] == "evicted unused images"
        # The unused image is gone; the one a warm instance holds stays.
        now_installed = installed(d)
        assert images["spare"].digest not in now_installed
        assert images["warm"].digest in now_installed
        assert wait_until(lambda: "refusing new images" in healing_actions(d, "disk"), WAIT_S)

        # Warm functions keep serving; a function whose image is not here is refused.
        assert d.invoke_ok("warm", {"word": "b"})["reply"] == "B!warm"
        refused = d.invoke("cold", {"word": "c"})
        assert refused.status_code == 502
        message = refused.json()["error"]["message"]
        assert "cannot be installed now: the node's disk is nearly full" in message
        assert str(small_state_dir) not in message  # no host paths to callers
        logged = d.wait_for_log("image not available", function="cold")
        assert "refusing to install image" in logged["error"]
        assert images["cold"].digest not in installed(d)

        filler.unlink()
        assert wait_until(lambda: health_loop(d, "disk")["state"] == "ok", WAIT_S)
        assert health_loop(d, "disk")["counters"]["left"] == 1
        assert wait_until(
            lambda: "accepting new images again" in healing_actions(d, "disk"), WAIT_S
        )
        assert d.invoke_ok("cold", {"word": "d"})["reply"] == "D!cold"
        assert images["cold"].digest in installed(d)


HOG = """
import os, time

HELD = []

def handler(event, context):
    HELD.append(b"\\x01" * (event["mb"] << 20))  # touched pages: they count
    deadline = time.monotonic() + 20
    while not os.path.exists(event["release"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return {"pid": os.getpid(), "held_mb": event["mb"]}
"""

ECHO = """
import os

def handler(event, context):
    return {"pid": os.getpid()}
"""


def test_memory_pressure_holds_starts_reaps_idle_and_recovers(root: Path) -> None:
    write_package(root, "hog", HOG)
    write_package(root, "echo", ECHO)
    # A worker is ~10 MiB. Two of them stay far below 60 % of 100 MiB; the hog
    # holding 64 MiB crosses it; once the hog is reaped the rest is below 30 %.
    functions = """
[health]
memory_interval_ms = 50
memory_budget_mb = 100
memory_enter_percent = 60
memory_leave_percent = 30
memory_min_available_mb = 0
disk_enter_free_percent = 1
disk_leave_free_percent = 2

[[functions]]
name = "warm"
package = "pkgs/echo"
handler = "main:handler"
min_instances = 1

[[functions]]
name = "hog"
package = "pkgs/hog"
handler = "main:handler"
timeout_ms = 25000

[[functions]]
name = "cold"
package = "pkgs/echo"
handler = "main:handler"
"""
    release = root / "release"
    with Daemon(write_config(root, functions)) as d:
        warm_pid = d.invoke_ok("warm")["pid"]
        assert health_loop(d, "memory")["state"] == "ok"

        hog_reply: dict[str, httpx.Response] = {}

        def call_hog() -> None:
            with d.client() as c:
                hog_reply["r"] = c.post("/v1/invoke/hog", json={"mb": 64, "release": str(release)})

        caller = threading.Thread(target=call_hog)
        caller.start()
        try:
            assert wait_until(lambda: health_loop(d, "memory")["state"] == "degraded", WAIT_S)
            memory = health_loop(d, "memory")
            assert "of the node's 100 MiB budget" in memory["detail"]
            assert memory["counters"]["entered"] == 1
            assert wait_until(
                lambda: "holding instance starts" in healing_actions(d, "memory"), WAIT_S
            )

            # The warm instance keeps serving (min_instances keeps it from the reaper).
            assert d.invoke_ok("warm")["pid"] == warm_pid
            # A function with no instance is refused at once, saying why.
            refused = d.invoke("cold")
            assert refused.status_code == 503
            assert "memory pressure" in refused.json()["error"]["message"]
            assert "100 MiB budget" in refused.json()["error"]["message"]
        finally:
            release.touch()
            caller.join(WAIT_S + 10)
        assert hog_reply["r"].status_code == 200, hog_reply["r"].text
        hog_pid = hog_reply["r"].json()["pid"]

        # Now idle and still over the budget: reaped, and the node recovers.
        assert wait_until(lambda: health_loop(d, "memory")["state"] == "ok", WAIT_S)
        memory = health_loop(d, "memory")
        assert memory["counters"]["left"] == 1
        assert memory["counters"]["instances_reaped"] >= 1
        assert wait_until(lambda: not pid_alive(hog_pid), WAIT_S)
        assert pid_alive(warm_pid)
        assert wait_until(
            lambda: "starting instances again" in healing_actions(d, "memory"), WAIT_S
        )
        assert d.invoke("cold").status_code == 200
