"""The node's side of the fleet: its link to the central scheduler.

A node with a ``[scheduler]`` table reports its state to the central scheduler
as versioned resource deltas and executes the scheduler's commands, over the
delta-event protocol of :mod:`protocol.delta` (PROTOCOL.md). Without that
table the daemon is standalone and none of this runs.

Modules, one job each:

- :mod:`~huselet.fleet.state` — :class:`NodeStateModel`: the node's resources
  (node, capacity, functions, instances) and their changes as deltas
- :mod:`~huselet.fleet.commands` — :class:`FleetCommands`: what each scheduler
  command does to the daemon (deploy, update, remove, quota, drain, prefetch)
- :mod:`~huselet.fleet.link` — :class:`SchedulerLink`: dials the scheduler
  addresses and drives the protocol machine over TCP
"""

from huselet.fleet.commands import CommandFailed, FleetCommands
from huselet.fleet.link import SchedulerLink
from huselet.fleet.state import NodeStateModel

__all__ = ["CommandFailed", "FleetCommands", "NodeStateModel", "SchedulerLink"]
