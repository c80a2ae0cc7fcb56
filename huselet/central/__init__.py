"""A small reference central scheduler for huselet nodes.

It exists so the delta-event protocol (PROTOCOL.md) is exercised for real —
many nodes over TCP, leader election with epochs, failover, resync — and so a
small fleet can run without writing a scheduler. It is not a second product:
placement is deliberately simple. Leadership and desired state live in etcd.

Modules:

- :mod:`~huselet.central.server` — :class:`CentralScheduler`: campaign, lead,
  commands, reconciliation, stepping down
- :mod:`~huselet.central.sessions` — node connections (TLS, standby redirect,
  per-node session reader/writer, session events)
- :mod:`~huselet.central.etcd` — a small etcd v3 client (JSON gateway, httpx)
- :mod:`~huselet.central.election` — the leader lease and the epoch on etcd
- :mod:`~huselet.central.store` — desired state in etcd (guarded writes) or
  the dev-mode journal; :mod:`~huselet.central.journal` — the records
- :mod:`~huselet.central.backend` — etcd (HA) or local (single-host dev mode)
- :mod:`~huselet.central.embedded` — a private single-member etcd
- :mod:`~huselet.central.leader` — the dev-mode lock (flock) and epoch file
- TLS contexts (node links, etcd) live in :mod:`huselet.tls`, shared with
  the node side (its link must not import this package)
- :mod:`~huselet.central.placement` — placement rule and reconciliation (pure)
- :mod:`~huselet.central.api` / :mod:`~huselet.central.admin` — operator API over HTTP
- :mod:`~huselet.central.cli` — ``python -m huselet.central`` / ``huselet central``
"""

from huselet.central.server import CentralScheduler, CentralSettings

__all__ = ["CentralScheduler", "CentralSettings"]
