"""End to end through the real daemon: functions whose code is a packed directory,
an image file, or a digest on a real HTTP origin; clear 502s when code cannot be
had; ``huselet ctl cache / prefetch / scrub``; the publish directory; scrub →
quarantine → refetch. One daemon for the module."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cache_testkit import (
    APP_FILES,
    OriginServer,
    build_image,
    publish,
    variant,
    write_tree,
)
from daemon_harness import Daemon, wait_until, write_config
from support import closed_port

pytestmark = pytest.mark.e2e


class Env:
    def __init__(self, root: Path, daemon: Daemon, server: OriginServer, images: dict[str, Any]):
        self.root = root
        self.daemon = daemon
        self.server = server
        self.images = images

    def cache(self) -> dict[str, Any]:
        out = self.daemon.ctl("cache", "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def installed(self, digest: str) -> bool:
        return any(
            row["digest"] == digest and row["level"] in ("disk", "memory")
            for row in self.cache()["images"]
        )


@pytest.fixture(scope="module")
def env(module_short_tmp: Path) -> Iterator[Env]:
    root = module_short_tmp
    write_tree(root / "pkgs" / "dev", APP_FILES)
    images = {
        tag: build_image(root, tag, variant(tag)) for tag in ("img", "remote", "later", "hint")
    }
    shutil.copy(images["img"].path, root / "app.hlimg")
    served = root / "served"
    for tag in ("remote", "hint"):
        publish(images[tag].path, served)
    (root / "nowhere").mkdir()
    with OriginServer(served) as server:
        functions = f"""
            [cache]
            publish_dir = "publish"
            scrub_interval_s = 0
            fetch_attempts = 2

            [[functions]]
            name = "dev"
            package = "pkgs/dev"
            handler = "main:handler"

            [[functions]]
            name = "img"
            image = "app.hlimg"
            handler = "main:handler"

            [[functions]]
            name = "remote"
            digest = "{images["remote"].digest}"
            origin = "{server.url}"
            handler = "main:handler"

            [[functions]]
            name = "missing"
            digest = "{"ab" * 32}"
            origin = "{server.url}"
            handler = "main:handler"

            [[functions]]
            name = "down"
            digest = "{"cd" * 32}"
            origin = "http://127.0.0.1:{closed_port()}/images"
            handler = "main:handler"

            [[functions]]
            name = "later"
            digest = "{images["later"].digest}"
            origin = "nowhere"
            handler = "main:handler"
            """
        with Daemon(write_config(root, functions)) as daemon:
            yield Env(root, daemon, server, images)
            # A clean stop: the cache's tasks end without an error at shutdown.
            assert daemon.terminate(30) == 0, "\n".join(daemon.lines[-20:])


def test_functions_run_from_images_whatever_names_their_code(env: Env) -> None:
    extract = env.root / "state" / "cache" / "extract"
    for name, suffix in (("dev", "!"), ("img", "!img"), ("remote", "!remote")):
        reply = env.daemon.invoke(name, {"word": "hey"})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["reply"] == "HEY" + suffix and body["note"] == "served from the image"
        # A virtual path in the image's extracted tree (it holds app/note.txt).
        file = Path(body["file"])
        assert file.parent.parent == extract and not file.exists()
    # The origin served the compressed transfer copy, once.
    assert env.server.requests[f"{env.images['remote'].digest}.hlimg.zst"] == 1


def test_code_that_cannot_be_had_is_a_quick_502_with_the_reason(env: Env) -> None:
    missing = env.daemon.invoke("missing", {})
    assert missing.status_code == 502
    error = missing.json()["error"]
    assert error["code"] == "instance_start_failed"
    assert "its code is not available: image abababababab is not at its origin" in error["message"]
    down = env.daemon.invoke("down", {})
    assert down.status_code == 502
    assert down.json()["error"]["message"].endswith(
        "image cdcdcdcdcdcd could not be fetched: its origin is unreachable or failing"
    )
    assert "127.0.0.1" not in down.text  # origin addresses stay in the node's log
    env.daemon.wait_for_log("image not available")


def test_ctl_cache_and_status_show_the_levels(env: Env) -> None:
    assert env.daemon.invoke("dev", {}).status_code == 200
    data = env.cache()
    dev = next(r for r in data["images"] if r["functions"] == ["dev"])
    assert dev["level"] == "memory" and dev["pins"] >= 1 and dev["source"] == "package"
    assert sum(dev["hits"].values()) >= 1
    text = env.daemon.ctl("cache")
    assert text.returncode == 0
    assert "LEVEL" in text.stdout and "memory" in text.stdout and dev["digest"][:12] in text.stdout
    status = env.daemon.status()["cache"]
    assert status["memory"]["misses"] >= 1 and status["disk"]["misses"] >= 1
    assert status["origin"]["fetches"] >= 1
    human = env.daemon.ctl("status")
    assert "cache" in human.stdout and "hit" in human.stdout


def test_prefetch_by_digest_and_by_function(env: Env) -> None:
    digest = env.images["hint"].digest
    out = env.daemon.ctl("prefetch", "--digest", digest, "--origin", env.server.url, "--wait")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"installed {digest}")
    row = next(r for r in env.cache()["images"] if r["digest"] == digest)
    assert row["level"] == "disk" and row["source"] == "hint"
    again = env.daemon.ctl("prefetch", "--function", "remote", "--json")
    assert json.loads(again.stdout)["status"] == "present"
    bad = env.daemon.ctl("prefetch", "--digest", "zz")
    assert bad.returncode == 1 and "bad_request" in bad.stderr
    usage = env.daemon.ctl("prefetch")
    assert usage.returncode == 2


def test_publishing_an_image_makes_a_waiting_function_servable(env: Env) -> None:
    first = env.daemon.invoke("later", {})
    assert first.status_code == 502 and "is not at its origin" in first.text
    digest = env.images["later"].digest
    publish = env.root / "publish"
    staging = publish / ".later.tmp"
    staging.write_bytes(env.images["later"].path.read_bytes())
    staging.rename(publish / "later.hlimg")
    assert wait_until(lambda: env.installed(digest)), "\n".join(env.daemon.lines[-40:])
    env.daemon.wait_for_log("image published")
    reply = env.daemon.invoke("later", {"word": "now"})
    assert reply.status_code == 200 and reply.json()["reply"] == "NOW!later"


def test_scrub_quarantines_a_corrupt_image_and_refetches_it(env: Env) -> None:
    digest = env.images["remote"].digest
    assert env.daemon.invoke("remote", {}).status_code == 200
    installed = env.root / "state" / "cache" / "images" / f"{digest}.hlimg"
    data = bytearray(installed.read_bytes())
    data[-1] ^= 0xFF  # bit rot in the last page
    installed.write_bytes(data)
    out = env.daemon.ctl("scrub")
    assert out.returncode == 0, out.stderr
    assert "1 bad" in out.stdout and f"quarantined {digest}" in out.stdout
    assert list((env.root / "state" / "cache" / "quarantine").iterdir())
    assert wait_until(lambda: env.installed(digest))
    assert env.server.fetches(digest) == 2
    events = [e["kind"] for e in env.cache()["events"]]
    assert "quarantined" in events
    assert env.daemon.invoke("remote", {}).status_code == 200
    clean = env.daemon.ctl("scrub", "--json")
    assert json.loads(clean.stdout)["bad"] == []
