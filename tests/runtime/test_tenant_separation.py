"""Tenant separation below the gateway, with the real fork runtime (root, namespaces,
cgroups): functions of different tenants never share a uid, zygote, cgroup or network
namespace, and a function that changes owner shares nothing with its previous owner."""

from __future__ import annotations

import functools
import os
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from sandbox_support import function, invoke_json, require_sandbox_host, sandbox_settings
from support import running_stack, write_package

from huselet.config import FunctionSettings
from huselet.runtime.isolation import UidAllocator, identity

WHOAMI = """
import os
ZYGOTE = os.getppid()  # in the zygote at import: its parent; in the instance: ignored

def handler(event, ctx):
    return {
        "uid": os.getuid(),
        "netns": os.readlink("/proc/self/ns/net"),
        "cgroup": open("/proc/self/cgroup").read().strip(),
        "zygote_boot": open("/proc/self/stat").read().split()[21],
        "importer": ZYGOTE,
    }
"""


def test_uids_are_per_tenant_and_function() -> None:
    fn = FunctionSettings(name="f", package=Path("/"), handler="m:h")
    uids = UidAllocator(300_000, 10)
    plain = uids.uid_for(identity(fn))
    acme = uids.uid_for(identity(replace(fn, tenant="acme")))
    globex = uids.uid_for(identity(replace(fn, tenant="globex")))
    assert len({plain, acme, globex}) == 3
    assert uids.uid_for(identity(replace(fn, tenant="acme"))) == acme


@pytest.mark.usefixtures("sandbox_host")
async def test_functions_of_two_tenants_share_no_uid_zygote_cgroup_or_netns(
    short_tmp: Path,
) -> None:
    pkg = write_package(short_tmp, "who", WHOAMI)
    fn = functools.partial(function, "fork")
    functions = [fn("a", pkg, tenant="acme"), fn("b", pkg, tenant="globex")]
    runtimes = {"fork": sandbox_settings(short_tmp)}
    async with running_stack(short_tmp, functions, runtimes) as stack:
        with trio.fail_after(30):
            a = await invoke_json(stack, "a", {})
            b = await invoke_json(stack, "b", {})
        assert a["uid"] != b["uid"] and a["uid"] != 0 and b["uid"] != 0
        assert a["netns"] != b["netns"]
        assert a["netns"] != os.readlink("/proc/self/ns/net")
        assert a["cgroup"] != b["cgroup"]
        # The function moves to another tenant (a reload with a new owner):
        # new uid, new zygote, new network namespace.
        old = stack.function("a")
        stack.dispatcher.deploy_function(replace(old, tenant="globex"), {"source": "test"})
        with trio.fail_after(30):
            moved = await invoke_json(stack, "a", {})
        assert moved["uid"] not in (a["uid"], b["uid"])
        assert moved["netns"] not in (a["netns"], b["netns"])


@pytest.fixture
def sandbox_host() -> None:
    require_sandbox_host()
