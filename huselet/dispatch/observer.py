"""InstanceObserver: what a pool tells the metrics about its instances' lives.

A pool calls these synchronously at the moments that matter (an instance is
ready, failed to start (why: a :class:`~huselet.dispatch.reasons.StartFailure`
decided where it failed), served its first reply, ended); they must be cheap
and must not raise. :class:`huselet.metrics.instances.InstanceMetrics`
implements it; a pool without an observer just skips the calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from huselet.dispatch.instance import InstanceRecord
    from huselet.dispatch.invocation import Invocation
    from huselet.dispatch.pool import FunctionPool
    from huselet.dispatch.reasons import StartFailure


class InstanceObserver(Protocol):
    def instance_ready(self, pool: FunctionPool, record: InstanceRecord) -> None: ...

    def start_failed(
        self, pool: FunctionPool, record: InstanceRecord, reason: str, kind: StartFailure
    ) -> None: ...

    def first_reply(self, pool: FunctionPool, record: InstanceRecord, inv: Invocation) -> None: ...

    def instance_ended(self, pool: FunctionPool, record: InstanceRecord) -> None: ...
