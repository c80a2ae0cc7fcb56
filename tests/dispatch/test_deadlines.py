"""The deadline timer: one task expires every invocation whose deadline passed."""

from __future__ import annotations

import trio

from huselet.dispatch.deadlines import COMPACT_AFTER, DeadlineTimer
from huselet.dispatch.invocation import Invocation
from huselet.errors import Unavailable


def _inv(deadline: float, name: str = "r") -> Invocation:
    return Invocation(name, "fn", b"{}", "json", deadline)


class _Expiries:
    def __init__(self) -> None:
        self.seen: list[tuple[str, object, float]] = []
        self.changed = trio.Event()

    def __call__(self, inv: Invocation, tag: object) -> None:
        inv.complete(Unavailable("expired"))
        self.seen.append((inv.request_id, tag, trio.current_time()))
        self.changed.set()
        self.changed = trio.Event()

    async def until(self, count: int) -> None:
        while len(self.seen) < count:
            await self.changed.wait()


async def test_expires_what_is_due_and_nothing_done(autojump_clock: trio.abc.Clock) -> None:
    expiries = _Expiries()
    timer = DeadlineTimer(expiries)
    now = trio.current_time()
    late, answered = _inv(now + 1, "late"), _inv(now + 3, "answered")
    timer.watch(late, "pool-a")
    timer.watch(answered, "pool-b")
    answered.complete(Unavailable("answered in time"))
    timer.forget()
    await expiries.until(1)
    await trio.sleep(10)  # well past both deadlines: nothing else is expired
    assert [(rid, tag) for rid, tag, _ in expiries.seen] == [("late", "pool-a")]
    assert expiries.seen[0][2] >= late.deadline
    assert len(timer) == 0


async def test_an_earlier_deadline_wakes_the_sleeping_timer(autojump_clock: trio.abc.Clock) -> None:
    expiries = _Expiries()
    timer = DeadlineTimer(expiries)
    now = trio.current_time()
    timer.watch(_inv(now + 1000, "long"), None)
    await trio.sleep(1)  # the timer is asleep until the long deadline
    short = _inv(trio.current_time() + 2, "short")
    timer.watch(short, None)
    await expiries.until(1)
    rid, _, when = expiries.seen[0]
    # Expired at its own deadline, not when the timer would have woken for "long".
    assert rid == "short" and short.deadline <= when < now + 1000


async def test_finished_entries_do_not_pile_up(autojump_clock: trio.abc.Clock) -> None:
    timer = DeadlineTimer(_Expiries())
    now = trio.current_time()
    stuck = _inv(now + 1000, "stuck")  # at the top of the heap, never finishes here
    timer.watch(stuck, None)
    for i in range(20 * COMPACT_AFTER):
        inv = _inv(now + 2000, f"r{i}")
        timer.watch(inv, None)
        inv.complete(Unavailable("done"))
        timer.forget()
    # Bounded by what is in flight plus the compaction slack, not by the request count.
    assert len(timer) <= 2 * COMPACT_AFTER + 2
