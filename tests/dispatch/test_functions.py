"""Deploying, replacing and removing a function: the one path reload and the fleet share."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from support import running_stack, write_package

from huselet.dispatch.functions import FunctionDeployment
from huselet.dispatch.sources import CodeSource

ECHO = "def handler(event, context):\n    return event\n"


async def test_deploy_redeploy_and_remove_keep_socket_source_and_version(short_tmp: Path) -> None:
    write_package(short_tmp, "echo", ECHO)
    config = {"name": "echo", "package": "pkgs/echo", "handler": "main:handler"}
    async with running_stack(short_tmp, [config]) as stack:
        functions = FunctionDeployment(stack.dispatcher, stack.links)
        assert functions.source("echo") is CodeSource.CONFIG
        assert functions.source("new") is None

        # A new function: its link socket opens first, so its instances can connect.
        new = replace(stack.config.functions[0], name="new")
        await functions.deploy(new, CodeSource.SCHEDULER, version=3)
        assert "new" in stack.links.served
        assert functions.source("new") is CodeSource.SCHEDULER
        assert stack.dispatcher.describe_function("new")["version"] == 3
        result = await stack.dispatcher.invoke("new", b'{"a": 1}', "json")
        assert b'"a"' in result.body

        # New code: a new pool of the same function, source and version kept.
        old_pool = stack.dispatcher.pools["new"]
        assert functions.redeploy({"new", "missing"}) == ["new"]
        assert stack.dispatcher.pools["new"] is not old_pool and not old_pool.accepting
        assert functions.source("new") is CodeSource.SCHEDULER
        assert stack.dispatcher.describe_function("new")["version"] == 3
        result = await stack.dispatcher.invoke("new", b'{"b": 2}', "json")
        assert b'"b"' in result.body

        # Limits in place: the same pool takes them.
        pool = stack.dispatcher.pools["echo"]
        functions.update(replace(pool.settings, max_instances=7))
        assert stack.dispatcher.pools["echo"] is pool and pool.settings.max_instances == 7

        assert functions.remove("new") is True
        assert functions.remove("new") is False
        assert functions.source("new") is None
        assert functions.redeploy(["new"]) == []
