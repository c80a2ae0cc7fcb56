"""A small reference central scheduler for huselet nodes.

It exists so the delta-event protocol (PROTOCOL.md) is exercised for real —
many nodes over TCP, an active/standby pair with epochs, failover, resync —
and so a small fleet can run without any other software. It is not a second
product: placement is deliberately simple and state lives in one journal file.

Modules:

- :mod:`~huselet.central.server` — :class:`CentralScheduler`: leadership, node
  connections, commands, reconciliation
- :mod:`~huselet.central.journal` — desired state and command log on disk
- :mod:`~huselet.central.leader` — the leader lock (flock) and the epoch file
- :mod:`~huselet.central.placement` — placement rule and reconciliation (pure)
- :mod:`~huselet.central.api` / :mod:`~huselet.central.admin` — operator API over HTTP
- :mod:`~huselet.central.cli` — ``python -m huselet.central`` / ``huselet central``
"""

from huselet.central.server import CentralScheduler, CentralSettings

__all__ = ["CentralScheduler", "CentralSettings"]
