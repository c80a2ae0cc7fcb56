"""Scheduler commands applied to a real node stack (runtimes, link sockets, pools, workers)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from support import NodeStack, eventually, running_stack, write_package

from huselet.config.trust import DeployPolicy
from huselet.dispatch.functions import FunctionDeployment
from huselet.fleet.commands import CommandFailed, FleetCommands, FunctionStore

pytestmark = pytest.mark.e2e

ECHO = "import os\ndef handler(event, context):\n    return {'v': VERSION, 'pid': os.getpid()}\n"


def make(root: Path, stack: NodeStack, *, prefetcher: Any = None) -> FleetCommands:
    commands = FleetCommands(
        stack.config,
        FunctionDeployment(stack.dispatcher, stack.links),
        known_runtimes=stack.runtimes,
        on_placements=lambda placements: None,
        store=FunctionStore(root / "fleet.json"),
        prefetcher=(lambda: prefetcher) if prefetcher is not None else None,
        policy=DeployPolicy(package_roots=(Path(os.path.realpath(root)),)),
    )
    commands.set_lease(True)
    return commands


def spec(root: Path, name: str = "echo", version_text: str = "1", **extra: Any) -> dict[str, Any]:
    write_package(root, f"v{version_text}", ECHO.replace("VERSION", version_text))
    return {
        "name": name,
        "package": str(root / "pkgs" / f"v{version_text}"),
        "handler": "main:handler",
        **extra,
    }


async def call(stack: NodeStack, name: str) -> dict[str, Any]:
    result = await stack.dispatcher.invoke(name, b"{}", "json")
    return json.loads(result.body)  # type: ignore[no-any-return]


async def test_deploy_update_and_remove_at_runtime(short_tmp: Path) -> None:
    async with running_stack(short_tmp, []) as stack:
        commands = make(short_tmp, stack)
        reply = await commands.execute(
            "c1", "deploy_function", {"version": 1, "spec": spec(short_tmp)}
        )
        assert reply == {"applied": True, "version": 1}
        assert (await call(stack, "echo"))["v"] == 1
        meta = stack.dispatcher.describe_function("echo")
        assert (meta["source"], meta["version"]) == ("scheduler", 1)

        # The same version again (a re-delivery by a new leader) changes nothing.
        again = await commands.execute(
            "c2", "deploy_function", {"version": 1, "spec": spec(short_tmp)}
        )
        assert again == {"applied": False, "version": 1}

        updated = await commands.execute(
            "c3", "update_function", {"version": 2, "spec": spec(short_tmp, version_text="2")}
        )
        assert updated["applied"] and (await call(stack, "echo"))["v"] == 2

        assert await commands.execute("c4", "remove_function", {"name": "echo"}) == {
            "removed": True
        }
        assert "echo" not in stack.dispatcher.pools
        # The replaced and removed pools stop their instances once idle.
        await eventually(lambda: not stack.dispatcher._retiring)
        assert commands.duplicates == 0 and commands.duplicate_applies == 0


async def test_quota_drain_and_refusals(short_tmp: Path) -> None:
    write_package(short_tmp, "local", "def handler(e, c):\n    return 1\n")
    local = [{"name": "local", "package": "pkgs/local", "handler": "main:handler"}]
    async with running_stack(short_tmp, local) as stack:
        commands = make(short_tmp, stack)
        await commands.execute("c1", "deploy_function", {"version": 1, "spec": spec(short_tmp)})
        limits = await commands.execute(
            "c2", "set_quota", {"name": "echo", "max_instances": 3, "min_instances": 1}
        )
        assert limits == {"max_instances": 3, "min_instances": 1}
        # min warm: an instance starts without a request
        await eventually(lambda: stack.pool("echo").instances)

        assert await commands.execute("c3", "drain", {}) == {"placements": "drained"}
        with pytest.raises(CommandFailed) as closed:
            await commands.execute(
                "c4", "deploy_function", {"version": 1, "spec": spec(short_tmp, "other")}
            )
        assert closed.value.code == "closed"
        # Updates of what is deployed still go through on a drained node.
        updated = await commands.execute(
            "c5", "update_function", {"version": 2, "spec": spec(short_tmp, version_text="2")}
        )
        assert updated["applied"]
        await commands.execute("c6", "undrain", {})
        assert commands.placements == "open"
        commands.set_lease(False)
        assert commands.placements == "lease_expired"

        for body, code in [
            ({"version": 1, "spec": spec(short_tmp, "local")}, "not_owned"),
            ({"version": 0, "spec": spec(short_tmp)}, "bad_command"),
            (
                {
                    "version": 9,
                    "spec": {
                        "name": "x",
                        "handler": "main:handler",
                        "package": str(short_tmp / "nope"),
                    },
                },
                "config",
            ),
            (
                {"version": 9, "spec": {"name": "x", "handler": "main:handler", "package": "/etc"}},
                "policy",
            ),
        ]:
            commands.set_lease(True)
            with pytest.raises(CommandFailed) as failed:
                await commands.execute(f"bad-{code}", "deploy_function", body)
            assert failed.value.code == code, failed.value.message
        with pytest.raises(CommandFailed) as not_owned:
            await commands.execute("c7", "remove_function", {"name": "local"})
        assert not_owned.value.code == "not_owned"
        with pytest.raises(CommandFailed) as unsupported:
            await commands.execute("c8", "prefetch_images", {"images": [{"digest": "ab"}]})
        assert unsupported.value.code == "unsupported"
        assert commands.duplicates == 0


async def test_prefetch_goes_to_the_daemons_prefetcher(short_tmp: Path) -> None:
    class Prefetcher:
        def __init__(self) -> None:
            self.seen: list[dict[str, Any]] = []

        async def prefetch_command(self, args: dict[str, Any]) -> dict[str, Any]:
            self.seen.append(args)
            return {"digest": args.get("digest"), "status": "queued"}

    prefetcher = Prefetcher()
    async with running_stack(short_tmp, []) as stack:
        commands = make(short_tmp, stack, prefetcher=prefetcher)
        reply = await commands.execute(
            "c1", "prefetch_images", {"images": [{"digest": "ab", "origin": "/o"}, 3]}
        )
        assert reply["images"][0] == {"digest": "ab", "status": "queued"}
        assert reply["images"][1]["error"] == "bad_command"
        assert prefetcher.seen == [{"digest": "ab", "origin": "/o"}]


async def test_deployed_functions_survive_a_restart(short_tmp: Path) -> None:
    async with running_stack(short_tmp, []) as stack:
        commands = make(short_tmp, stack)
        await commands.execute("c1", "deploy_function", {"version": 3, "spec": spec(short_tmp)})
    async with running_stack(short_tmp, []) as stack:
        commands = make(short_tmp, stack)
        await commands.restore()
        assert commands.deployed["echo"]["version"] == 3
        assert (await call(stack, "echo"))["v"] == 1
