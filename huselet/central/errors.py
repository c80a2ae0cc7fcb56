"""Typed errors of the reference central scheduler; one base, :class:`CentralError`.

The etcd client keeps its own family (:class:`~huselet.central.etcd.EtcdError`,
a transport concern); these are the scheduler's decisions and states: who
leads, whether a write landed, whether a function can be placed.
"""

from __future__ import annotations


class CentralError(Exception):
    """The central scheduler refused or could not do what was asked."""


class NotLeader(CentralError):
    """A mutation was asked of a standby."""


class LeadershipLost(CentralError):
    """The lease could not be renewed in time: this process no longer leads."""


class Deposed(CentralError):
    """A write was refused because this process no longer leads (fenced by etcd)."""


class StoreUnavailable(CentralError):
    """The store could not be written in time; nothing was applied."""


class StateInUse(CentralError):
    """Another scheduler already runs on this local state directory."""


class PlacementError(CentralError):
    """No (or not enough) nodes can take the function."""
