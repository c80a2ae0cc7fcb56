"""The dispatcher's change events reach every subscriber, not just the last one to ask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support import running_stack, write_package

from huselet.dispatch.events import MAX_LISTENERS, ChangeEvents

Change = tuple[str, str, "dict[str, Any] | None"]


def _fn(root: Path, name: str) -> dict[str, Any]:
    write_package(root, name, "def handler(event, context):\n    return event\n")
    return {"name": name, "package": f"pkgs/{name}", "handler": "main:handler"}


async def test_two_subscribers_both_see_changes_and_unsubscribe_stops_one(
    short_tmp: Path,
) -> None:
    async with running_stack(short_tmp, [_fn(short_tmp, "echo")]) as stack:
        dispatcher = stack.dispatcher
        first: list[Change] = []
        second: list[Change] = []

        def broken(kind: str, name: str, body: dict[str, Any] | None) -> None:
            raise RuntimeError("a listener with a bug")

        dispatcher.subscribe(lambda *change: first.append(change))
        dispatcher.subscribe(broken)  # must not keep the others from hearing
        dispatcher.subscribe(lambda *change: second.append(change))
        dispatcher.set_quota("echo", max_instances=3, min_instances=0)
        assert [c[:2] for c in first] == [("function", "echo")]
        assert [c[:2] for c in second] == [("function", "echo")]
        assert first[0][2] is not None and first[0][2]["max_instances"] == 3

        dispatcher.unsubscribe(broken)
        assert len(dispatcher.changes) == 2
        dispatcher.remove_function("echo")
        assert first[-1] == ("function", "echo", None)
        assert second[-1] == ("function", "echo", None)


def test_subscribe_is_idempotent_unsubscribe_tolerant_and_bounded() -> None:
    events = ChangeEvents()
    seen: list[Change] = []

    def listener(kind: str, name: str, body: dict[str, Any] | None) -> None:
        seen.append((kind, name, body))

    events.subscribe(listener)
    events.subscribe(listener)
    events.emit("instance", "i-1", {"state": "idle"})
    assert seen == [("instance", "i-1", {"state": "idle"})]
    events.unsubscribe(listener)
    events.unsubscribe(listener)  # not subscribed any more: ignored
    events.emit("instance", "i-1", None)
    assert len(seen) == 1

    for _ in range(MAX_LISTENERS):
        events.subscribe(lambda kind, name, body: None)  # a new function each time
    with pytest.raises(RuntimeError, match="change listeners"):
        events.subscribe(listener)
