"""The ingress's source-address policy: CIDR allow and deny lists, and what one
"source" is for per-source limits.

Deny wins over allow; an empty allow list allows every address not denied.
IPv4-mapped IPv6 peers (``::ffff:10.0.0.1``, what a dual-stack listener
reports) are matched as the IPv4 address they are.

Per-source limits (the rate of ``auth.source_rate_per_s``, the connection share
of ``gateway.max_connections_per_source``) count an IPv4 address, or an IPv6
``/64``: one host is routinely given a whole /64, so keyed by full address a
single client could spread over 2^64 "sources" and evade both.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def source_key(peer: str) -> str:
    """What a per-source limit counts ``peer`` as: its IPv4 address, or its IPv6 /64."""
    if ":" not in peer:
        return peer  # IPv4 (or "" / "?"): as it is, without parsing
    try:
        address = ipaddress.IPv6Address(peer.split("%", 1)[0])
    except ValueError:
        return peer
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


def parse_networks(values: Sequence[str]) -> tuple[Network, ...]:
    """CIDRs (or single addresses); ValueError names the first bad one."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or CIDR block") from None
    return tuple(out)


class SourcePolicy:
    def __init__(self, allow: Sequence[Network], deny: Sequence[Network]) -> None:
        self.allow = tuple(allow)
        self.deny = tuple(deny)
        self.active = bool(self.allow or self.deny)
        # Peers of one node are few and repeat: cache the verdicts (bounded).
        self._verdicts: dict[str, bool] = {}

    def allows(self, peer: str) -> bool:
        if not self.active:
            return True
        verdict = self._verdicts.get(peer)
        if verdict is None:
            verdict = self._decide(peer)
            if len(self._verdicts) >= 4096:
                self._verdicts.clear()
            self._verdicts[peer] = verdict
        return verdict

    def _decide(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False  # not an IP peer (unknown): a list is set, so refuse
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in net for net in self.deny):
            return False
        return not self.allow or any(address in net for net in self.allow)
