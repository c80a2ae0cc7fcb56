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
