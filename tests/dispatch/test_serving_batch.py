"""Batches on the instance link: a worker that keeps several requests of credit.

The test is the worker (``linkpeer``). What is checked: the daemon writes the
requests a read's credit allows in one send; a new request goes to an idle
instance, never behind a busy one's request while the pool may still grow;
only an idle instance's credit counts as spare capacity; and a request that
expires while queued behind another on the link does not stop the instance
(it has not started), while one found stuck on it after its grace does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing
from linkpeer import first_request, serving, start_instance, submit

from huselet.dispatch.buffer import HandOvers
from huselet.dispatch.outcomes import OVERDUE_GRACE_S, possibly_started
from huselet.dispatch.reasons import StopReason
from huselet.dispatch.serving import MAX_CREDITS
from huselet.errors import DeadlineExceeded
from protocol.frames import FrameDecoder
from protocol.link import ERROR_DEADLINE, ErrorInfo, Pull, Result


def ok(rid: str) -> dict[str, object]:
    return Result(rid, ok=True, body=b"1").encode()


async def test_a_read_s_credit_goes_out_in_one_send_in_order(tmp_path: Path) -> None:
    async with serving(tmp_path) as (pool, record, peer):
        first = await first_request(pool, peer, "r-0")
        queued = [submit(pool, f"r-{i}") for i in range(1, 6)]
        # Busy: its next requests wait for its next read, not the submitter.
        assert pool.buffer.live_count() == 5 and record.inflight == {"r-0": first}
        await peer.send(ok("r-0"), Pull(4).encode())
        data = await peer.sock.recv(1 << 20)  # one send: every frame in one read
        assert all(f"r-{i}".encode() in data for i in range(1, 5)), data
        peer.decoder.receive_data(data)
        got = [(await peer.request()).id for _ in range(4)]
        assert got == ["r-1", "r-2", "r-3", "r-4"]
        assert peer.decoder.buffered == 0
        assert [inv.link_seq for inv in record.inflight.values()] == [1, 2, 3, 4]
        assert pool.buffer.live_count() == 1 and record.credits == 0
        # Only the oldest unanswered one can have started.
        assert [possibly_started(record, inv) for inv in queued[:4]] == [True, False, False, False]
        for rid in got:
            await peer.send(ok(rid))
        await peer.send(Pull(1).encode())
        assert (await peer.request()).id == "r-5"
        await peer.send(ok("r-5"))
        for inv in [first, *queued]:
            await inv.wait()
            assert inv.result().body == b"1"


class CountingDecoder(FrameDecoder):
    """The daemon's side of the link, counting its looks for a frame."""

    __slots__ = ("looks",)

    def __init__(self) -> None:
        super().__init__(max_frame=64 << 20)
        self.looks = 0

    def next_frame(self) -> dict[str, Any] | None:
        self.looks += 1
        return super().next_frame()


async def test_the_link_reader_parses_a_read_once_and_reads_the_clock_once(
    tmp_path: Path,
) -> None:
    decoder = CountingDecoder()
    async with serving(tmp_path, decoder) as (pool, record, peer):
        first = await first_request(pool, peer, "r-0")
        await trio.testing.wait_all_tasks_blocked()  # the reader waits for the worker
        looks = decoder.looks
        await peer.send(ok("r-0"), Pull(1).encode())  # one send: one read
        await first.wait()
        await trio.testing.wait_all_tasks_blocked()
        # The RESULT, the PULL, and one look that finds nothing more: no second
        # look at the same bytes before the next read.
        assert decoder.looks - looks == 3
        # The frames of one read share one clock reading (taken after the read).
        assert record.last_active == record.last_heard
        assert record.credits == 1


async def test_a_batch_is_shared_out_among_idle_instances_each_share_in_one_send(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as (pool, first, peer), trio.open_nursery() as nursery:
        batch = pool.buffer.hand_overs = HandOvers()
        second, second_peer, handle = await start_instance(pool, nursery)
        await peer.send(Pull(4).encode())
        await second_peer.send(Pull(4).encode())
        while pool.spare_credits != 8:
            await trio.sleep(0.001)
        with batch:  # the framed ingress admitting the calls of one read
            invs = [submit(pool, f"r-{i}") for i in range(6)]
            assert pool.buffer.live_count() == 6 and not first.inflight
        # Each idle instance got its share (the pool cannot grow: starts held), in
        # order; one each and the rest queued for later results cost more writes.
        assert pool.buffer.live_count() == 0
        assert len(first.inflight) == 3 and len(second.inflight) == 3
        for instance_peer, record in ((second_peer, second), (peer, first)):
            data = await instance_peer.sock.recv(1 << 20)
            instance_peer.decoder.receive_data(data)
            got = [(await instance_peer.request()).id for _ in range(3)]
            assert got == list(record.inflight) and instance_peer.decoder.buffered == 0
            for rid in got:
                await instance_peer.send(ok(rid))
        for inv in invs:
            await inv.wait()
            assert inv.result().body == b"1"
        handle.kill()
        nursery.cancel_scope.cancel()


async def test_an_idle_instance_takes_a_request_before_a_busy_one_with_credit(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as (pool, busy, peer), trio.open_nursery() as nursery:
        await peer.send(Pull(4).encode())
        first = submit(pool, "r-0")
        assert (await peer.request()).id == "r-0"
        assert busy.credits == 3 and pool.spare_credits == 0  # busy: not spare
        idle, idle_peer, handle = await start_instance(pool, nursery)
        await idle_peer.send(Pull(1).encode())
        while pool.spare_credits != 1:
            await trio.sleep(0.001)
        second = submit(pool, "r-1")
        assert second.instance is idle and (await idle_peer.request()).id == "r-1"
        await idle_peer.send(ok("r-1"))
        await peer.send(ok("r-0"))
        for inv in (first, second):
            await inv.wait()
        handle.kill()
        nursery.cancel_scope.cancel()


async def test_while_the_pool_can_grow_no_request_waits_behind_another(tmp_path: Path) -> None:
    async with serving(tmp_path) as (pool, record, peer):
        # Starts not held: the pool could start an instance (a host-limit hold
        # keeps the test's pool from really starting one).
        pool.starts_held = None
        pool.host_limit.until = trio.current_time() + 3600
        await peer.send(Pull(4).encode())
        first = submit(pool, "r-0")
        assert (await peer.request()).id == "r-0"
        second = submit(pool, "r-1")
        await peer.send(Pull(1).encode())  # a read with credit, while r-0 runs
        while record.credits != 4:
            await trio.sleep(0.001)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.buffer.live_count() == 1 and list(record.inflight) == ["r-0"]
        await peer.send(ok("r-0"))  # idle again: now it takes r-1
        assert (await peer.request()).id == "r-1"
        await peer.send(ok("r-1"))
        for inv in (first, second):
            await inv.wait()


async def test_a_request_that_expires_behind_another_does_not_stop_the_instance(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as (pool, record, peer):
        head = await first_request(pool, peer, "head")
        late = submit(pool, "late")
        await peer.send(Pull(3).encode())
        assert (await peer.request()).id == "late"
        late.complete(DeadlineExceeded("test: the deadline passed"))  # as the deadline timer does,
        pool.on_deadline(late)  # then tells the pool
        assert record.stop_reason is None and "late" in record.inflight
        await peer.send(ok("head"))
        await head.wait()
        # The worker skips it (its deadline passed): no stop, nothing left.
        skipped = Result("late", ok=False, error=ErrorInfo(ERROR_DEADLINE, "late"))
        await peer.send(skipped.encode())
        while record.inflight:
            await trio.sleep(0.001)
        assert record.stop_reason is None and pool.counters["deadline_kills"] == 0


async def test_an_instance_stuck_on_a_request_that_expired_behind_another_is_stopped(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with serving(tmp_path) as (pool, record, peer):
        await peer.send(Pull(2).encode())
        head = submit(pool, "head")
        late = submit(pool, "late")
        assert [(await peer.request()).id for _ in range(2)] == ["head", "late"]
        late.complete(DeadlineExceeded("test: the deadline passed"))
        pool.on_deadline(late)
        await peer.send(ok("head"))  # late is the oldest now, and never answered
        await head.wait()
        await trio.sleep(OVERDUE_GRACE_S / 2)
        assert record.stop_reason is None
        await trio.sleep(OVERDUE_GRACE_S)
        assert record.stop_reason is StopReason.DEADLINE
        assert pool.counters["deadline_kills"] == 1


async def test_credit_a_worker_claims_past_the_bound_is_not_counted(tmp_path: Path) -> None:
    """A worker (the function's own code) asking for ever more requests does not make the
    pool believe it has capacity: credit stops at MAX_CREDITS."""
    async with serving(tmp_path) as (pool, record, peer):
        await peer.send(*[Pull(1024).encode() for _ in range(5)])
        while record.credits < MAX_CREDITS:
            await trio.sleep(0.001)
        await trio.testing.wait_all_tasks_blocked()
        assert record.credits == MAX_CREDITS
        assert pool.spare_credits == MAX_CREDITS  # idle: all of it counted, no more
