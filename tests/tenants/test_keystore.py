"""The key store: a bad file never replaces a good one; changes are noticed by polling."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from huselet.tenants.keys import KeyRing
from huselet.tenants.keystore import KeyStore

GOOD = '[[tenants]]\nname = "a"\n[[tenants.keys]]\nid = "HK{n}"\nsecret = "0123456789abcdefgh"\n'


def write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


async def test_reload_keeps_the_ring_when_the_file_is_bad(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    write(path, GOOD.format(n="ONE1"))
    seen: list[KeyRing] = []
    store = KeyStore(path)
    store.on_change = seen.append
    store.load()
    write(path, "[[tenants]\n")
    await store.reload()
    assert set(store.ring.keys) == {"HKONE1"} and store.last_error is not None
    assert "not valid TOML" in store.describe()["error"]
    write(path, GOOD.format(n="TWO2"))
    await store.reload()
    assert set(store.ring.keys) == {"HKTWO2"} and store.last_error is None
    assert [set(r.keys) for r in seen] == [{"HKONE1"}, {"HKTWO2"}]
    assert "0123456789abcdefgh" not in str(store.describe())


async def test_a_change_is_noticed_by_polling(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    write(path, GOOD.format(n="ONE1"))
    store = KeyStore(path, poll_s=0.01)
    store.load()
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        write(path, GOOD.format(n="TWO2"))
        with trio.fail_after(30):
            while "HKTWO2" not in store.ring.keys:
                await trio.sleep(0.01)
        loads = store.loads
        write(path, "garbage = [")  # refused once, not re-read every period
        with trio.fail_after(30):
            while store.last_error is None:
                await trio.sleep(0.01)
        await trio.sleep(0.1)
        assert store.loads == loads and "HKTWO2" in store.ring.keys
        nursery.cancel_scope.cancel()


def test_retarget_to_no_file_empties_the_ring(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    write(path, GOOD.format(n="ONE1"))
    store = KeyStore(path)
    store.load()
    store.retarget(None)
    assert not store.ring.keys and not store.enabled


class TaskSteps(trio.abc.Instrument):
    """How many times each task ran a step."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] = self.steps.get(task.name, 0) + 1


async def test_without_a_keys_file_the_poll_never_wakes_until_a_reload_names_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """An idle node without tenants' keys must not pay a wake-up a second (issue 12)."""
    store = KeyStore(None, poll_s=1.0)
    counter = TaskSteps()
    trio.lowlevel.add_instrument(counter)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run, name="keystore")
            await trio.sleep(600)  # ten minutes of Trio time
            assert counter.steps.get("keystore", 0) <= 2  # started, then parked for good
            path = tmp_path / "keys.toml"
            write(path, GOOD.format(n="ONE1"))
            store.retarget(path)  # a reload names a file: polled from now on
            with trio.fail_after(30):
                while "HKONE1" not in store.ring.keys:
                    await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(counter)
