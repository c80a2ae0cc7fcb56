"""An HTTP request whose invocation was begun and whose reply is made once it is done.

The HTTP ingress used to wait for every invocation in the connection's task
(``await core.invoke``): the result woke that task, which then wrote the
reply. With the node's staged dispatcher the ingress instead *begins* the
invocation and hands the connection a :class:`PendingReply`; the connection
waits for it as it sees fit, and the reply can be made and written from
where the result arrives (the instance link's reader, through
:attr:`Invocation.on_done`), which spares a task wake-up per request
(:meth:`huselet.gateway.connection.Connection._await_reply`).

:class:`PendingReplies` turns a done one into its reply (:meth:`finish`) or
gives it up (:meth:`abandon`); both are synchronous and give back what the
request held (its admission slots, its body budget, the dispatcher's count),
exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from huselet.dispatch.invocation import Invocation
from huselet.errors import HuseletError
from huselet.gateway.admission import Ticket
from huselet.gateway.core import InvokeCore, StagedInvoker
from huselet.gateway.httpfunc import function_reply
from huselet.gateway.responses import Reply, content_type_header, error_reply
from huselet.observe.context import RequestMeta


@dataclass(slots=True)
class PendingReply:
    """A begun invocation and what its request holds until its reply is made."""

    inv: Invocation
    ticket: Ticket
    reserved: int  # body budget bytes
    takes_http: bool  # the reply is the function's own (status, headers)
    started: float  # when the ingress took the request (Server-Timing's total)
    meta: RequestMeta


class PendingReplies:
    """Finishes or abandons the :class:`PendingReply` objects of one ingress."""

    __slots__ = ("_core", "staged")

    def __init__(self, core: InvokeCore, staged: StagedInvoker) -> None:
        self._core = core
        self.staged = staged

    def finish(self, pending: PendingReply) -> Reply:
        """The reply to a done invocation (its result, or its error's reply); never raises
        a HuseletError. Must be called once, and only once ``pending.inv`` is done."""
        inv = pending.inv
        inv.on_done = None
        core = self._core
        self.staged.settle(inv)
        core.body_budget.release(pending.reserved)
        pending.ticket.release()
        try:
            result = core.outcome(inv)
            if pending.takes_http:
                reply = function_reply(result)
            else:
                reply = Reply(200, result.body, content_type_header(result.content_type))
        except HuseletError as exc:
            reply = error_reply(exc)
        extra = pending.meta.headers(trio.current_time() - pending.started)
        return Reply(reply.status, reply.body, reply.content_type, reply.headers + extra)

    def abandon(self, pending: PendingReply) -> None:
        """Its caller gave up (cancelled, gone): the invocation must not run on for nobody."""
        inv = pending.inv
        inv.on_done = None
        finished = inv.done
        self.staged.abandon(inv)
        self.staged.settle(inv, finished=finished)
        self._core.body_budget.release(pending.reserved)
        pending.ticket.release()
