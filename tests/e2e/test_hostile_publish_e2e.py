"""Hostile drops into the publish directory (issue 11, findings 1 and 5), real daemon.

- an image truncated while the daemon hashes it: a rejection, never a SIGBUS;
- symlinks (to a directory holding a 0600 file, to an image) are refused, never followed;
- FIFOs are refused at once (never a hang), trees holding a FIFO or a file
  others cannot read are refused with a clear reason;
- after all of it the daemon still publishes a good drop and serves.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cache_support import APP_FILES, build_image, variant, write_tree
from daemon_harness import Daemon, wait_until, write_config

from cache.builder import pack_directory

pytestmark = pytest.mark.e2e

BIG_MB = 512


class Env:
    def __init__(self, root: Path, daemon: Daemon) -> None:
        self.root = root
        self.daemon = daemon
        self.publish = root / "publish"

    def cache(self) -> dict[str, Any]:
        out = self.daemon.ctl("cache", "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def rejected(self, name: str) -> str | None:
        for event in self.cache()["events"]:
            if event["kind"] == "rejected" and event.get("name") == name:
                return str(event["detail"])
        return None

    def installed(self, digest: str) -> bool:
        return any(row["digest"] == digest for row in self.cache()["images"])

    def alive(self) -> bool:
        return self.daemon.proc.poll() is None


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    root = Path(tempfile.mkdtemp(prefix="hlp"))
    write_tree(root / "pkgs" / "dev", APP_FILES)
    functions = """
        [cache]
        publish_dir = "publish"
        scrub_interval_s = 0

        [[functions]]
        name = "dev"
        package = "pkgs/dev"
        handler = "main:handler"
        """
    with Daemon(write_config(root, functions)) as daemon:
        yield Env(root, daemon)
        assert daemon.terminate(30) == 0, "\n".join(daemon.lines[-20:])
    shutil.rmtree(root, ignore_errors=True)


def _daemon_reads(pid: int, path: Path) -> bool:
    """The daemon has ``path`` open or mapped (either way it is reading it now)."""
    target = str(path)
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return True
            except OSError:
                continue
        with open(f"/proc/{pid}/maps") as maps:
            return any(line.rstrip("\n").endswith(" " + target) for line in maps)
    except OSError:
        return False


def test_truncating_a_large_image_while_it_is_hashed_is_a_rejection_not_sigbus(
    env: Env,
) -> None:
    src = write_tree(env.root / "src" / "big", APP_FILES)
    with open(src / "big.bin", "wb") as f:
        f.truncate(BIG_MB << 20)  # sparse on disk, real zeros in the image
    built = env.root / "built-big"
    built.mkdir()
    info = pack_directory(src, built)
    staged = env.publish / ".big.tmp"  # ignored name: copied first, then renamed in
    shutil.copyfile(info.path, staged)
    drop = env.publish / "big.hlimg"
    os.rename(staged, drop)
    pid = env.daemon.proc.pid
    # Poll tightly: the hash of 512 MiB takes a few hundred ms.
    assert wait_until(lambda: _daemon_reads(pid, drop), timeout=60, interval=0.0005), (
        "the daemon never opened the drop"
    )
    os.truncate(drop, 8192)
    assert wait_until(lambda: not env.alive() or env.rejected("big.hlimg"), timeout=60)
    assert env.alive(), "the daemon died:\n" + "\n".join(env.daemon.lines[-20:])
    reason = env.rejected("big.hlimg") or ""
    assert "truncated" in reason or "changed while" in reason or "mismatch" in reason, reason
    assert not env.installed(info.digest)
    drop.unlink()


def test_symlinks_in_the_publish_dir_are_refused_not_followed(env: Env) -> None:
    outside = write_tree(env.root / "outside", {**APP_FILES, "secret.key": "hunter2"})
    (outside / "secret.key").chmod(0o600)
    (env.publish / "linked").symlink_to(outside, target_is_directory=True)
    good = build_image(env.root, "linkimg", variant("linkimg"))
    (env.publish / "linked.hlimg").symlink_to(good.path)
    for name in ("linked", "linked.hlimg"):
        assert wait_until(lambda name=name: env.rejected(name), timeout=30), name
        assert "is a symlink" in (env.rejected(name) or "")
    assert not env.installed(good.digest)
    assert not any(row["source"] == "published" for row in env.cache()["images"])


def test_fifos_and_unreadable_files_are_refused_and_a_good_drop_still_publishes(
    env: Env,
) -> None:
    os.mkfifo(env.publish / "pipe.hlimg")
    with_fifo = write_tree(env.root / "staging" / "with-fifo", APP_FILES)
    os.mkfifo(with_fifo / "pipe")
    private = write_tree(env.root / "staging" / "private", {**APP_FILES, "id_rsa": "KEY"})
    (private / "id_rsa").chmod(0o600)
    for tree in (with_fifo, private):
        os.rename(tree, env.publish / tree.name)
    expected = {
        "pipe.hlimg": "is a FIFO",
        "with-fifo": "pipe is a FIFO",
        "private": "file id_rsa has mode 0600: others cannot read it",
    }
    for name, message in expected.items():
        assert wait_until(lambda name=name: env.rejected(name), timeout=30), name
        assert message in (env.rejected(name) or ""), env.rejected(name)
    assert env.alive()
    good = build_image(env.root, "fine", variant("fine"))
    staged = env.publish / ".fine.tmp"
    shutil.copyfile(good.path, staged)
    os.rename(staged, env.publish / "fine.hlimg")
    assert wait_until(lambda: env.installed(good.digest), timeout=30)
    assert env.daemon.invoke("dev", {"word": "still"}).status_code == 200
