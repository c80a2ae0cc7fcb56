"""The dispatch core both front ends share: from an accepted request to a result.

The HTTP ingress and the framed ingress differ in how bytes arrive; what a
request *means* must not differ. :class:`InvokeCore` holds that meaning: the
bearer-token check, the draining refusal, the body bound, and the rule that a
daemon fault reaches the caller as a bare ``500 internal`` (details go to the
log, never to the caller).
"""

from __future__ import annotations

import hmac
from contextlib import AbstractContextManager
from typing import Protocol, Unpack, runtime_checkable

from huselet.dispatch.invocation import Invocation, InvokeOptions, InvokeResult
from huselet.errors import Draining, HuseletError, PayloadTooLarge, Unauthorized
from huselet.gateway.budget import UNLIMITED, BodyBudget, tune_allocator
from huselet.gateway.responses import InternalError
from huselet.log import get_logger
from huselet.observe.context import RequestMeta
from protocol.link import HttpRequest

log = get_logger("gateway")


class Invoker(Protocol):
    """What the front ends need from the node's dispatcher."""

    draining: bool

    async def invoke(
        self, function: str, event: bytes, kind: str, **options: Unpack[InvokeOptions]
    ) -> InvokeResult: ...

    def takes_http(self, function: str) -> bool:
        """Whether ``function`` takes HTTP requests (any method, sub-paths); False if unknown."""
        ...


@runtime_checkable
class StagedInvoker(Protocol):
    """An invoker whose invocations a caller can wait for without a task each.

    (The node's :class:`~huselet.dispatch.dispatcher.Dispatcher`.) ``begin``
    accepts one or raises the refusal; the caller learns of its end through
    :attr:`Invocation.on_done`, calls ``abandon`` if it gives up, and
    ``settle`` exactly once at the end.
    """

    def begin(
        self, function: str, event: bytes, kind: str, **options: Unpack[InvokeOptions]
    ) -> Invocation: ...

    def abandon(self, inv: Invocation) -> None: ...

    def settle(
        self, inv: Invocation, *, finished: bool = True, now: float | None = None
    ) -> None: ...

    def batch(self) -> AbstractContextManager[object]:
        """Around several ``begin`` calls in a row: their requests go to instances
        together at its end (the framed ingress admits one read's calls in one)."""
        ...


class InvokeCore:
    def __init__(
        self,
        invoker: Invoker,
        *,
        max_body: int,
        token: str | None,
        max_buffered_bytes: int = UNLIMITED,
    ) -> None:
        self.invoker = invoker
        self.max_body = max_body
        self._token = token.encode() if token is not None else None
        # Bodies of both front ends together (gateway.max_buffered_mb): a request
        # reserves its body before reading it and holds it until its reply.
        self.body_budget = BodyBudget(max_buffered_bytes)
        self.staged = invoker if isinstance(invoker, StagedInvoker) else None
        tune_allocator()

    @property
    def requires_token(self) -> bool:
        return self._token is not None

    def check_token(self, presented: str | None) -> None:
        """Refuse a missing or wrong token (constant-time; never says which part was wrong)."""
        if self._token is None:
            return
        if presented is None:
            raise Unauthorized("a token is required")
        if not hmac.compare_digest(presented.encode(), self._token):
            raise Unauthorized("the token is not valid")

    def check_admission(self, body_size: int | None) -> None:
        """The cheap refusals, before a body is read or a call is queued."""
        if self.invoker.draining:
            raise Draining("the node is draining and takes no new requests", retry_after_s=1)
        if body_size is not None and body_size > self.max_body:
            raise PayloadTooLarge(f"the request body exceeds {self.max_body} bytes")

    async def invoke(
        self,
        function: str,
        event: bytes,
        kind: str,
        *,
        timeout_ms: int | None,
        request_id: str,
        http: HttpRequest | None = None,
        meta: RequestMeta | None = None,
    ) -> InvokeResult:
        """Run one invocation; any failure is a HuseletError fit for the caller.

        ``meta`` carries the caller's trace context in and the timings out.
        """
        try:
            return await self.invoker.invoke(
                function,
                event,
                kind,
                timeout_ms=timeout_ms,
                request_id=request_id,
                http=http,
                meta=meta,
            )
        except Exception as exc:
            if isinstance(exc, HuseletError) and exc.status != 500:
                raise
            raise _internal(function, request_id) from None

    def begin(
        self,
        staged: StagedInvoker,
        function: str,
        event: bytes,
        kind: str,
        *,
        timeout_ms: int | None,
        request_id: str,
        meta: RequestMeta | None = None,
        http: HttpRequest | None = None,
    ) -> Invocation:
        """:meth:`invoke`, split: accept the invocation now (or raise as :meth:`invoke`
        would); its end comes through ``on_done``, then :meth:`outcome`."""
        try:
            return staged.begin(
                function,
                event,
                kind,
                timeout_ms=timeout_ms,
                request_id=request_id,
                meta=meta,
                http=http,
            )
        except Exception as exc:
            if isinstance(exc, HuseletError) and exc.status != 500:
                raise
            raise _internal(function, request_id) from None

    def outcome(self, inv: Invocation) -> InvokeResult:
        """The result of a done invocation from :meth:`begin`, or its error raised
        as :meth:`invoke` would (a daemon fault as a bare 500)."""
        try:
            return inv.result()
        except HuseletError as exc:
            if exc.status != 500:
                raise
            log.error(
                "invoke failed", function=inv.function, request_id=inv.request_id, error=str(exc)
            )
            raise InternalError("internal error") from None


def _internal(function: str, request_id: str) -> InternalError:
    """The caller's error for a daemon fault (call it while handling the exception).

    A bare HuseletError (or one without a mapped status) is a daemon fault and
    any other exception a bug below us: the traceback goes to the log, and the
    caller only learns that it happened (no message, paths or frames).
    """
    log.exception("invoke failed", function=function, request_id=request_id)
    return InternalError("internal error")
