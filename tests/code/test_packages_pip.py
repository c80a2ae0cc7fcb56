"""PackageManager with pip in the way: one package's hanging index never holds up
another function's pack (images build one at a time, pips wait apart)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from test_packages import fn_dir, make_config, running_cache


async def test_a_hanging_pip_does_not_hold_up_another_functions_pack(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An index that accepts connections and never answers: pip hangs in its fetch
    # for pip_timeout_s (600 s), as behind a firewall that drops packets.
    index = trio.socket.socket()
    await index.bind(("127.0.0.1", 0))
    index.listen(16)
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{index.getsockname()[1]}/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    slow = fn_dir(short_tmp, "slow")
    slow_dir = short_tmp / "pkgs" / "slow"
    (slow_dir / "requirements.txt").write_text("huselet-test-no-such-dist==1.0\n")
    config = make_config(short_tmp, [slow], pip_timeout_s=600)
    plain = make_config(short_tmp, [fn_dir(short_tmp, "plain")]).functions[0]
    async with running_cache(config) as cache:
        manager = cache.packages
        with trio.fail_after(120):
            conn, _ = await index.accept()  # the slow package's pip is fetching now
        # A function deployed meanwhile: its pack must not wait for that pip.
        with trio.fail_after(120):
            lease = await manager.acquire(plain)
        assert lease.digest
        lease.release()
        slow_pack = manager._dirs[slow_dir.resolve()]
        assert not slow_pack.ready.is_set()  # still waiting on its index
        conn.close()
    index.close()
