"""Code updates deploy, through the real daemon under steady traffic.

A function's package directory is edited ten times; after each edit ``huselet
ctl reload`` re-packs it and, the digest having changed, redeploys it: new
requests go to instances (and, on ``fork``, a zygote) of the new code while
requests in flight finish on the old ones. Every request is answered, each by
exactly one version, and every request sent after a reload returned is
answered by the new version (or a newer one). Old instances and old zygotes
then stop.

The same with ``cache.watch_packages``: saving the file is enough. And an image
file rewritten in place is noticed by a reload too.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import Daemon, wait_until, write_config
from load_support import BackgroundLoad

pytestmark = pytest.mark.e2e

CHANGES = 10
RELOAD_TIMEOUT_S = "120"
SOURCE = """
import time
VERSION = {version}

def handler(event, context):
    time.sleep(0.02)  # keeps requests in flight across each switch
    return {{"version": VERSION, "also": {version}}}
"""


def write_version(pkg: Path, version: int) -> None:
    tmp = pkg / "main.py.tmp"
    tmp.write_text(SOURCE.format(version=version))
    tmp.rename(pkg / "main.py")  # one atomic save, as editors do


def instances(daemon: Daemon, function: str) -> list[dict[str, Any]]:
    out = daemon.ctl("instances", "--json")
    assert out.returncode == 0, out.stderr
    return [i for i in json.loads(out.stdout) if i["function"] == function]


def check_versions(report: Any, switched_at: list[tuple[int, float]]) -> None:
    assert report.accounted and report.failed == 0, report.summary() + "".join(
        f"\n  {o.describe()}" for o in report.outcomes if o.kind != "ok"
    )
    for outcome in report.outcomes:
        body = json.loads(outcome.body)
        assert body["version"] == body["also"], body  # one version answered it, whole
        # Sent after reload i returned: version i, or a later one if it waited in
        # the queue past the next switch; never code replaced before it was sent.
        switched = max((v for v, t in switched_at if t <= outcome.sent_at), default=0)
        assert body["version"] >= switched, (outcome.describe(), body, switched)


@pytest.mark.parametrize("runtime", ["process", "fork"])
def test_ten_code_changes_under_steady_traffic(short_tmp: Path, runtime: str) -> None:
    pkg = short_tmp / "pkg"
    pkg.mkdir()
    write_version(pkg, 0)
    config = write_config(
        short_tmp,
        f"""
        [[functions]]
        name = "live"
        package = "{pkg}"
        handler = "main:handler"
        runtime = "{runtime}"
        max_instances = 4
        """,
    )
    with Daemon(config) as daemon:
        assert daemon.invoke_ok("live")["version"] == 0
        first_zygotes = daemon.zygote_pids()
        switched_at: list[tuple[int, float]] = []
        # Four callers at most: requests stay in flight across every switch, but
        # a loaded machine that serves fewer than 40/s is not flooded (an open
        # loop queued requests past their deadline: 504s that were overload,
        # not the code update).
        load = BackgroundLoad(
            daemon.url, "live", rate=40, duration=600, timeout_s=30, max_in_flight=4
        )
        with load:
            for version in range(1, CHANGES + 1):
                write_version(pkg, version)
                out = daemon.ctl("reload", "--timeout", RELOAD_TIMEOUT_S)
                assert out.returncode == 0, out.stderr
                assert "new code: live" in out.stdout, out.stdout
                switched_at.append((version, time.monotonic()))
                # Sent after the reload returned: the new code answers, at once.
                assert daemon.invoke_ok("live")["version"] == version
            load.stop()
        check_versions(load.report, switched_at)
        # Only the last code's instances remain; the replaced ones stopped.
        assert wait_until(lambda: len({i["code"] for i in instances(daemon, "live")}) == 1, 60)
        if runtime == "fork":
            # The first code's zygote (built at start from the first image) stopped
            # and one of the newest code took its place.
            assert len(first_zygotes) == 1, first_zygotes
            assert wait_until(lambda: len(daemon.zygote_pids()) == 1, 60)
            assert wait_until(lambda: not daemon.zygote_pids() & first_zygotes, 60), (
                first_zygotes,
                daemon.zygote_pids(),
            )


def test_watch_packages_redeploys_on_save(short_tmp: Path) -> None:
    pkg = short_tmp / "pkg"
    pkg.mkdir()
    write_version(pkg, 0)
    config = write_config(
        short_tmp,
        f"""
        [cache]
        watch_packages = true
        [[functions]]
        name = "live"
        package = "{pkg}"
        handler = "main:handler"
        """,
    )
    with Daemon(config) as daemon:
        assert daemon.invoke_ok("live")["version"] == 0
        for version in (1, 2):
            write_version(pkg, version)
            assert wait_until(lambda v=version: daemon.invoke_ok("live")["version"] == v, 60)
        assert daemon.logs("function code changed")


def test_an_image_file_rewritten_in_place_is_redeployed_on_reload(short_tmp: Path) -> None:
    from cache.builder import pack_directory

    src = short_tmp / "src"
    src.mkdir()
    write_version(src, 0)
    image = short_tmp / "app.hlimg"
    pack_directory(src, image)
    config = write_config(
        short_tmp,
        f"""
        [[functions]]
        name = "img"
        image = "{image}"
        handler = "main:handler"
        """,
    )
    with Daemon(config) as daemon:
        assert daemon.invoke_ok("img")["version"] == 0
        before = {i["code"] for i in instances(daemon, "img")}
        write_version(src, 1)
        built = pack_directory(src, short_tmp / "next.hlimg")
        shutil.move(built.path, image)  # rewritten under the same name
        out = daemon.ctl("reload", "--timeout", RELOAD_TIMEOUT_S)
        assert out.returncode == 0 and "new code: img" in out.stdout, out.stdout + out.stderr
        assert daemon.invoke_ok("img")["version"] == 1
        codes = lambda: {i["code"] for i in instances(daemon, "img")}  # noqa: E731
        assert wait_until(lambda: codes() == {built.digest}, 60)
        assert before and before != {built.digest}
