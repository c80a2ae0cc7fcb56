"""One fork zygote per function and code, built at start from the code requests use.

With the default ``cache.pack_directories = true`` a function's requests run
the packed image of its package directory, so that is what its eager zygote
is built from, at start: the first request finds it ready and builds no
second one. With packing off, both are the package directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from daemon_harness import Daemon, wait_until, write_config

pytestmark = pytest.mark.e2e

HANDLER = "def handler(event, context):\n    return {'ok': True}\n"


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(): v.decode() for k, _, v in pairs}


@pytest.mark.skipif(os.geteuid() != 0, reason="reads the environment of the zygote's uid")
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "directory"])
def test_one_zygote_per_function_built_at_start_from_the_requests_code(
    short_tmp: Path, packed: bool
) -> None:
    pkg = short_tmp / "pkg"
    pkg.mkdir()
    (pkg / "main.py").write_text(HANDLER)
    config = write_config(
        short_tmp,
        f"""
        [cache]
        pack_directories = {"true" if packed else "false"}

        [[functions]]
        name = "f"
        package = "{pkg}"
        handler = "main:handler"
        runtime = "fork"
        """,
    )
    with Daemon(config) as daemon:
        # Built at start, before any request: one zygote, of the code requests get.
        assert wait_until(lambda: len(daemon.zygote_pids()) == 1, 60), daemon.zygote_pids()
        (zygote,) = daemon.zygote_pids()
        image = environ(zygote).get("HUSELET_IMAGE")
        assert (image is not None) == packed, image
        reply = daemon.invoke("f", {})
        assert reply.status_code == 200, reply.text
        # The first request was served from that zygote: no second one was built.
        assert daemon.zygote_pids() == {zygote}
        assert daemon.proc.poll() is None
