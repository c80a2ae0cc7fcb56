"""Dispatch from the link reader (serving._dispatch_inline) against a real socket peer.

Under load a request is waiting whenever a worker's RESULT and PULL come in,
and the reader writes it at once instead of waking the instance's serving task.
The peer here is the test itself on the other end of a socketpair, speaking
the link protocol, so it can stop reading or vanish at exactly the moment that
matters: right after it asked for more work.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from linkpeer import Peer, first_request, serving, submit

from huselet.dispatch.instance import InstanceState
from huselet.dispatch.invocation import Invocation
from huselet.dispatch.outcomes import possibly_started, retry
from huselet.dispatch.pool import FunctionPool
from huselet.dispatch.reasons import StopReason
from protocol.link import Pull, Result

BIG = b'"' + b"x" * (8 << 20) + b'"'  # a JSON string far larger than a socket buffer


async def queue_behind_a_busy_instance(
    pool: FunctionPool, peer: Peer, request_id: str
) -> tuple[Invocation, Invocation]:
    """The instance runs "small" while ``request_id`` (BIG) queues; the peer then
    answers and asks for more. Returns (small, queued)."""
    small = await first_request(pool, peer, "small")
    queued = submit(pool, request_id, BIG)
    await peer.send(Result("small", ok=True, body=b"1").encode(), Pull(1).encode())
    return small, queued


async def test_queued_requests_go_out_from_the_reader_in_order(tmp_path: Path) -> None:
    async with serving(tmp_path) as (pool, record, peer):
        first = await first_request(pool, peer, "r-0")
        # Queued while the instance is busy: each goes out on the next PULL.
        rest = [submit(pool, f"r-{i}") for i in range(1, 20)]
        served = [first]
        for inv in rest:
            done = served[-1]
            await peer.send(Result(done.request_id, ok=True, body=b"1").encode(), Pull(1).encode())
            assert (await peer.request()).id == inv.request_id  # FIFO
            served.append(inv)
            assert record.credits == 0 and pool.spare_credits == 0
        await peer.send(Result("r-19", ok=True, body=b"1").encode(), Pull(1).encode())
        for inv in served:
            await inv.wait()
            assert inv.result().body == b"1"
        assert pool.counters["ok"] == 20 and not record.inflight


async def test_a_frame_the_reader_could_only_partly_write_is_finished_by_the_serving_task(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as (pool, record, peer):
        first, large = await queue_behind_a_busy_instance(pool, peer, "large")
        await first.wait()
        request = await peer.request()  # reading lets the serving task write the rest
        assert request.id == "large" and request.event == BIG
        await peer.send(Result("large", ok=True, body=b"2").encode(), Pull(1).encode())
        await large.wait()
        assert large.result().body == b"2"
        assert record.sending is None and record.unsent is None


@pytest.mark.parametrize("how", ["closed", "stops_reading"])
async def test_an_instance_that_dies_as_the_reader_dispatches_loses_no_request(
    tmp_path: Path, how: str
) -> None:
    # The peer asks for more work and then dies (its end closed) or stops reading
    # with a large request half written: the request it never fully received
    # must stay in flight, marked as sending, so the teardown requeues it.
    async with serving(tmp_path) as (pool, record, peer):
        first, victim = await queue_behind_a_busy_instance(pool, peer, "victim")
        if how == "closed":
            peer.sock.close()  # the reader's write, or the serving task's, now fails
        await first.wait()
        assert first.result().body == b"1"
        if how == "stops_reading":
            # The rest of the frame waits for room that never comes: the
            # instance is stopped from outside (as a heartbeat or deadline would).
            while record.unsent is None:
                await trio.sleep(0.001)
            record.stop(StopReason.NOT_READING)
        else:
            while record.stop_reason is None:
                await trio.sleep(0.001)
        assert record.inflight == {"victim": victim}
        assert record.sending is victim and not victim.done
        # What the teardown does with it: back to the queue, undelivered.
        assert retry(pool, victim, record, delivered=possibly_started(record, victim))
        assert pool.counters["requeued_undelivered"] == 1
        assert pool.buffer.get_nowait() is victim


async def test_a_request_for_an_idle_instance_is_written_by_its_submitter(tmp_path: Path) -> None:
    async with serving(tmp_path) as (pool, record, peer):
        await peer.send(Pull(1).encode())
        while pool.buffer.idle_getters == 0:  # the instance waits as the buffer's taker
            await trio.sleep(0.001)
        assert record.state is InstanceState.IDLE
        with trio.testing.assert_no_checkpoints():
            inv = submit(pool, "r-1")
        # Written before anything else ran: no serving task woke up for it.
        assert record.inflight == {"r-1": inv} and record.sending is None
        assert record.state is InstanceState.BUSY and pool.buffer.live_count() == 0
        assert (await peer.request()).id == "r-1"


async def test_an_instance_that_keeps_serving_is_not_idled_out(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    # One idle timer per idle period, re-armed from the last result: an instance
    # busy for longer than idle_timeout in all (never idle that long) stays.
    async with serving(tmp_path, idle_timeout_ms=1000) as (pool, record, peer):
        await peer.send(Pull(1).encode())
        for i in range(6):
            await trio.sleep(0.6)
            inv = submit(pool, f"r-{i}")
            assert (await peer.request()).id == inv.request_id
            await peer.send(Result(inv.request_id, ok=True, body=b"1").encode(), Pull(1).encode())
            await inv.wait()
        assert record.stop_reason is None
        await trio.sleep(1.5)  # now idle past the timeout: it goes
        assert record.stop_reason is StopReason.IDLE
