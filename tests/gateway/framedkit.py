"""The framed ingress under test: a staged invoker that stands in for the dispatcher.

Shared by the tests/gateway/test_framed_*.py files.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Unpack

import trio
from httpkit import FakeInvoker

from huselet.dispatch.invocation import Invocation, InvokeOptions, InvokeResult
from huselet.errors import Unavailable


class StagedFake(FakeInvoker):
    """Accepts every call; the test completes them (or not) as it likes."""

    def __init__(self, *, answer_at_once: bool = False) -> None:
        super().__init__()
        self.begun: list[Invocation] = []
        self.abandoned: list[Invocation] = []
        self.settled: list[tuple[Invocation, bool]] = []
        self.settled_at: list[float | None] = []  # the clock reading each settle was given
        self.answer_at_once = answer_at_once

    def begin(
        self, function: str, event: bytes, kind: str, **options: Unpack[InvokeOptions]
    ) -> Invocation:
        inv = Invocation(
            options.get("request_id") or "r", function, event, kind, trio.current_time() + 60
        )
        self.begun.append(inv)
        if self.answer_at_once:
            inv.complete(InvokeResult(b"now", "text/plain"))
        return inv

    def abandon(self, inv: Invocation) -> None:
        self.abandoned.append(inv)
        inv.complete(Unavailable("the request was abandoned"))

    def settle(self, inv: Invocation, *, finished: bool = True, now: float | None = None) -> None:
        self.settled.append((inv, finished))
        self.settled_at.append(now)

    def batch(self) -> AbstractContextManager[object]:
        return nullcontext()
