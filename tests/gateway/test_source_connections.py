"""SourceConnections: a source's share of connections, counted exactly and forgotten
when its last connection ends (refusals end to end: test_source_connections_e2e.py)."""

from __future__ import annotations

from huselet.gateway.source_connections import SourceConnections


def test_a_source_gets_its_share_and_no_more() -> None:
    sources = SourceConnections(2)
    assert sources.try_open("10.0.0.1") and sources.try_open("10.0.0.1")
    assert not sources.try_open("10.0.0.1")
    assert sources.try_open("10.0.0.2")  # another source has its own share
    assert (sources.held("10.0.0.1"), sources.refused) == (2, 1)
    sources.close("10.0.0.1")
    assert sources.try_open("10.0.0.1")  # a slot came back


def test_the_table_holds_only_sources_with_connections_open() -> None:
    sources = SourceConnections(4)
    for _ in range(3):
        assert sources.try_open("10.0.0.1")
    for _ in range(3):
        sources.close("10.0.0.1")
    assert sources.held("10.0.0.1") == 0 and not sources._open


def test_unix_peers_and_a_zero_cap_are_never_limited() -> None:
    capped = SourceConnections(1)
    assert all(capped.try_open("") for _ in range(10))  # the daemon's own user
    unlimited = SourceConnections(0)
    assert all(unlimited.try_open("10.0.0.1") for _ in range(10))
    assert capped.refused == unlimited.refused == 0


def test_an_ipv6_64_shares_one_share() -> None:
    sources = SourceConnections(2)
    assert sources.try_open("2001:db8::1") and sources.try_open("2001:db8::2")
    assert not sources.try_open("2001:db8::3")  # same /64: same host, same share
    assert sources.try_open("2001:db8:0:1::1")  # another /64
    sources.close("2001:db8::2")
    assert sources.held("2001:db8::1") == 1 and sources.try_open("2001:db8::3")
