"""ReplyFlush: work put off to the end of the event loop's pass, and never a raising hook."""

from __future__ import annotations

import trio

from huselet.dispatch.buffer import HandOvers
from huselet.gateway.replyflush import ReplyFlush


async def test_work_runs_at_the_end_of_the_pass_in_order() -> None:
    flush = ReplyFlush()
    flush.install()
    ran: list[int] = []
    try:
        flush.later(lambda: ran.append(1))
        flush.later(lambda: ran.append(2))
        assert ran == []  # not at once: this task's step is not over
        await trio.lowlevel.checkpoint()  # the pass ends (an I/O wait) before we run again
        assert ran == [1, 2]
    finally:
        flush.uninstall()


async def test_failing_work_is_logged_and_neither_stops_the_rest_nor_the_instrument() -> None:
    flush = ReplyFlush()
    flush.install()
    ran: list[str] = []

    def boom() -> None:
        raise RuntimeError("a bug in a reply")

    try:
        flush.later(boom)
        flush.later(lambda: ran.append("after"))
        await trio.lowlevel.checkpoint()
        assert ran == ["after"]
        # Still installed: trio drops an instrument whose hook raised.
        flush.later(lambda: ran.append("next pass"))
        await trio.lowlevel.checkpoint()
        assert ran == ["after", "next pass"]
    finally:
        flush.uninstall()


async def test_not_installed_runs_at_once_and_uninstall_runs_what_is_due() -> None:
    flush = ReplyFlush()
    ran: list[int] = []
    flush.later(lambda: ran.append(1))
    assert ran == [1]
    flush.install()
    flush.later(lambda: ran.append(2))
    flush.uninstall()
    assert ran == [1, 2]
    flush.later(lambda: ran.append(3))
    assert ran == [1, 2, 3]


async def test_a_held_batch_of_hand_overs_ends_with_the_pass() -> None:
    hand_overs = HandOvers()  # the dispatcher's own batching of hand-overs
    flush = ReplyFlush()
    flush.hold(hand_overs)
    assert not hand_overs.holding  # not installed: nothing is held
    flush.install()
    try:
        flush.hold(hand_overs)
        flush.hold(hand_overs)  # once per pass, however many requests
        assert hand_overs.holding
        await trio.lowlevel.checkpoint()
        assert not hand_overs.holding  # handed over at the end of the pass
        flush.hold(hand_overs)
    finally:
        flush.uninstall()
    assert not hand_overs.holding  # and when the ingress stops
