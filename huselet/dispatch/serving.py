"""Serving requests on a ready pool instance, and what happens to them afterwards.

:func:`serve` runs while an instance is up: it reads the worker's frames
(RESULT, PULL credits), sends it queued requests as credit allows — written
by whoever has one to give (the reader on a PULL, or the submitter through the
buffer's taker for an idle instance), not by a task woken for it — and ends
the instance on idle timeout, exit or a broken link. What becomes of each
request afterwards (its reply, or a retry) is :mod:`huselet.dispatch.outcomes`. Like
:mod:`huselet.dispatch.lifecycle`, these are functions over the
:class:`~huselet.dispatch.pool.FunctionPool` state, split out to keep the pool
module to admission and scaling.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from huselet.dispatch.counters import PoolCounter
from huselet.dispatch.instance import InstanceRecord, InstanceState
from huselet.dispatch.invocation import Invocation
from huselet.dispatch.outcomes import complete, possibly_started
from huselet.dispatch.reasons import StopReason
from huselet.log import get_logger
from protocol.errors import ProtocolError
from protocol.frames import FrameEncoder
from protocol.link import (
    PULL,
    RESULT,
    message_type,
    pull_count,
    request_message,
    result_fields,
)

if TYPE_CHECKING:
    from huselet.dispatch.pool import FunctionPool

# REQUEST frames, packed without a packer built per frame (protocol.frames).
_ENCODER = FrameEncoder()

# The pool's logger: these lines were always the pool's, and dashboards filter on it.
log = get_logger("pool")


async def serve(pool: FunctionPool, record: InstanceRecord) -> None:
    if pool.single_use:
        await _serve_single_use(pool, record)
        return
    wake = trio.Event()  # set when a frame's rest waits in record.unsent (or a head is overdue)
    # The run's clock, bound once (trio.current_time() is three calls deep): read on
    # every hand-over and every read of the link.
    clock = trio.lowlevel.current_clock().current_time

    def offer() -> None:
        """The instance may have credit: take queued requests, or wait as the buffer's taker.

        Runs in the reader (once the frames it read are handled) or in whoever
        queues a request (the buffer calls it): requests go out without waking
        the serving task, which is needed only for the rest of a frame that did
        not fit at once. Only an instance with nothing in flight waits as a
        taker: a new request goes to an idle instance, never behind another
        request while one is idle (the extra credit of a busy one is used when
        its results come in, and only while the pool cannot grow).
        """
        count_credits(pool, record)
        if _dispatch_inline(pool, record, clock):
            if record.unsent is not None:
                wake.set()
            return
        if (
            record.credits > 0
            and not record.inflight
            and record.sending is None
            and record.stop_reason is None
        ):
            record.state = InstanceState.IDLE
            pool.buffer.add_taker(record, offer)

    def pulled(n: int) -> None:
        # A worker runs its requests one at a time: credit past MAX_CREDITS is not
        # capacity, and counted as such it would stop the pool from scaling.
        record.credits = min(record.credits + n, MAX_CREDITS)

    def settle() -> None:
        # After the frames of one read: a head found overdue needs the serving task.
        if record.overdue_at != math.inf:
            wake.set()
        offer()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_guard_protocol, pool, record, pulled, settle, clock)
            pool.heartbeats.watch(record)  # one task per pool judges them all
            idle_timeout = pool.settings.idle_timeout_ms / 1000
            offer()
            while True:
                # One timer per idle period, not per request: it fires idle_timeout
                # after the last result; if the instance served since (or must stay),
                # it is set again from then (or from now).
                now = trio.current_time()
                deadline = _idle_since(record) + idle_timeout
                if deadline <= now:
                    deadline = now + idle_timeout
                with trio.CancelScope(deadline=min(deadline, record.overdue_at)) as timer:
                    while True:
                        await wake.wait()
                        wake = trio.Event()
                        if record.unsent is not None:
                            # The rest of a frame _dispatch_inline could only partly
                            # write. Never cut short by the timer: a frame's rest
                            # written twice (or half) would corrupt the link.
                            timer.deadline = math.inf
                            if not await _send_frame(pool, record, record.unsent):
                                return
                            record.unsent = None
                            record.sending = None
                            timer.deadline = trio.current_time() + idle_timeout
                            offer()
                        timer.deadline = min(timer.deadline, record.overdue_at)
                if _stuck_overdue(pool, record):
                    return
                if _idled_out(pool, record, idle_timeout):
                    nursery.cancel_scope.cancel()
                    return
    finally:
        pool.buffer.remove_taker(record)


def count_credits(pool: FunctionPool, record: InstanceRecord) -> None:
    """Keep ``pool.spare_credits`` the credits of instances with nothing in flight.

    Those take a request at once; the extra credit of a busy instance would
    queue it behind another, so the scaling rule must not count it as capacity.
    """
    counted = 0 if record.inflight else record.credits
    pool.spare_credits += counted - record.counted_credits
    record.counted_credits = counted


def expire_inflight(pool: FunctionPool, record: InstanceRecord, inv: Invocation) -> None:
    """``inv`` (in flight on ``record``) passed its deadline and its caller has its 504.

    The instance is stuck on it only if it can have started it; a request
    still queued behind another stays in flight there (the worker skips it,
    its deadline being past, or is stopped once it is found stuck on it).
    """
    if not possibly_started(record, inv):
        return
    record.inflight.pop(inv.request_id, None)
    pool.counters[PoolCounter.DEADLINE_KILLS] += 1
    record.stop(StopReason.DEADLINE)


def _stuck_overdue(pool: FunctionPool, record: InstanceRecord) -> bool:
    """The overdue head's grace ended unanswered: stop the instance (True)."""
    if record.overdue_at > trio.current_time():
        return False
    record.overdue_at = math.inf
    head = next(iter(record.inflight.values()), None)
    if head is None or not head.done or head.link_seq != record.answered:
        return False  # answered (or skipped) in time
    pool.counters[PoolCounter.DEADLINE_KILLS] += 1
    record.stop(StopReason.DEADLINE)
    return True


def _idled_out(pool: FunctionPool, record: InstanceRecord, idle_timeout: float) -> bool:
    """Stop ``record`` if it served nothing for ``idle_timeout`` and the pool can spare it."""
    if record.inflight or record.sending is not None:
        return False
    # The same sum as the timer's deadline: when it fires, this holds exactly.
    if trio.current_time() < _idle_since(record) + idle_timeout:
        return False
    # Count the live ones only: instances idle at once would each see the
    # others, already stopping, and all go.
    if pool.live_count() <= pool.settings.min_instances:
        return False
    pool.buffer.remove_taker(record)
    record.stop_reason = StopReason.IDLE
    record.state = InstanceState.STOPPING
    # Its capacity is gone now, not after the graceful stop.
    record.credits = 0
    count_credits(pool, record)
    pool.ensure_capacity()
    return True


def _idle_since(record: InstanceRecord) -> float:
    """Its last result, or when it became ready if it has served nothing since."""
    if record.ready_at is None:
        return record.last_active
    return max(record.last_active, record.ready_at)


async def _serve_single_use(pool: FunctionPool, record: InstanceRecord) -> None:
    """An instance for exactly one request: its serving task waits for it and sends it."""
    credit_arrived = trio.Event()

    def pulled(n: int) -> None:
        if not record.dispatched:  # it takes exactly one request
            record.credits += n
            count_credits(pool, record)
            credit_arrived.set()

    async with trio.open_nursery() as nursery:
        clock = trio.lowlevel.current_clock().current_time
        nursery.start_soon(_guard_protocol, pool, record, pulled, _nothing, clock)
        pool.heartbeats.watch(record)
        idle_timeout = pool.settings.idle_timeout_ms / 1000
        await credit_arrived.wait()
        record.state = InstanceState.IDLE
        inv = None
        while inv is None:
            with trio.move_on_after(idle_timeout):
                inv = await pool.buffer.get()
            if inv is None and _idled_out(pool, record, 0.0):
                nursery.cancel_scope.cancel()
                return
        frame = _take(pool, record, inv, trio.current_time())
        record.sending = inv
        count_credits(pool, record)
        if not await _send_frame(pool, record, frame):
            return
        record.sending = None
        record.dispatched += 1
        # Its one request is on its way: no more capacity here, and
        # _complete stops the instance once the result is in.
        record.credits = 0
        count_credits(pool, record)
        await trio.sleep_forever()


def _nothing() -> None:
    pass


def _take(pool: FunctionPool, record: InstanceRecord, inv: Invocation, now: float) -> bytes:
    """Give ``inv`` (just taken off the queue) to ``record``: one credit, in flight.

    Returns the request's frame. Until the whole frame is written the instance
    cannot have run it: the caller sets ``record.sending`` while it is not, and
    if the instance ends meanwhile the request goes back to the queue
    (:func:`retry`, undelivered).
    """
    record.credits -= 1
    record.state = InstanceState.BUSY
    inv.instance = record
    inv.link_seq = record.taken
    record.taken += 1
    record.inflight[inv.request_id] = inv
    timeout_ms = max(1, int((inv.deadline - now) * 1000))
    link = record.link
    assert link is not None
    return _ENCODER.encode(
        request_message(inv.request_id, inv.event, inv.kind, timeout_ms, inv.http, inv.trace),
        max_frame=link.max_frame,
        payload_len=len(inv.event),
    )


def _untake(pool: FunctionPool, record: InstanceRecord, invs: list[Invocation]) -> None:
    """Give back requests taken (the newest ones) whose frames got no byte on the wire."""
    for inv in reversed(invs):
        del record.inflight[inv.request_id]
        record.credits += 1
        record.taken -= 1
        record.dispatched -= 1
        pool.buffer.requeue(inv)  # at the head, in their order


async def _send_frame(pool: FunctionPool, record: InstanceRecord, frame: bytes) -> bool:
    """Write (the rest of) a request frame; False once the link failed (the instance stops)."""
    assert record.link is not None
    try:
        await record.link.send_frame(frame)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        # Handled here: inside the nursery it would surface as an ExceptionGroup.
        _send_failed(pool, record, exc)
        return False
    return True


def _send_failed(pool: FunctionPool, record: InstanceRecord, exc: BaseException) -> None:
    dead = exc if isinstance(exc, OSError) else exc.__cause__
    if isinstance(dead, (BrokenPipeError, ConnectionResetError)):
        record.stop(StopReason.LINK_CLOSED)  # it died: say how
    else:
        pool.counters[PoolCounter.LINK_ERRORS] += 1
        record.stop(StopReason.LINK_BROKE, exc)


# Requests in flight on one instance at most, whatever credit it asks for.
MAX_INFLIGHT = 8
MAX_CREDITS = 1024  # the most one PULL may ask for (protocol.link.pull_count)


def _may_queue_behind(pool: FunctionPool, record: InstanceRecord) -> bool:
    """May a request wait in ``record`` behind one in flight there?

    Only while the pool cannot start another instance (at ``max_instances``,
    or starts held): until then the queue's length is what makes it grow, and
    a request should wait for the instance that frees (or starts) first.
    """
    return len(record.inflight) < MAX_INFLIGHT and (
        len(pool.instances) >= pool.settings.max_instances or bool(pool.starts_held) or pool.closed
    )


def _dispatch_inline(
    pool: FunctionPool, record: InstanceRecord, clock: Callable[[], float]
) -> bool:
    """Hand queued requests to ``record`` now, written in one send without waiting.

    Called when the instance's frames were read (under load a request is
    always waiting when a result comes in) and by the buffer when a request
    arrives for an instance that waits as its taker: no task wakes up in
    between. An instance with nothing in flight takes one; more (as its
    credit allows) only while :func:`_may_queue_behind`. The serving task
    touches the link only to write a frame's rest (``record.sending`` is set
    meanwhile, and this refuses). True if a request was taken: written, or its
    frame's rest left in ``record.unsent`` for the serving task to write.
    """
    if (
        record.credits <= 0
        or record.sending is not None
        or record.stop_reason is not None
        or pool.single_use
        or record.link is None
    ):
        return False
    if record.inflight and not _may_queue_behind(pool, record):
        return False
    now = clock()  # one reading (trio.current_time()) for the requests handed over together
    inv = pool.buffer.get_nowait(now)
    if inv is None:
        return False
    frame = _take(pool, record, inv, now)
    taken = [inv]
    frames = [frame]
    # Handed over with other idle instances: this one's share, no more.
    share = pool.buffer.share or MAX_INFLIGHT
    while record.credits > 0 and len(taken) < share and _may_queue_behind(pool, record):
        more = pool.buffer.get_nowait(now)
        if more is None:
            break
        taken.append(more)
        frames.append(_take(pool, record, more, now))
    if len(frames) > 1:
        frame = b"".join(frames)
    count_credits(pool, record)
    record.dispatched += len(taken)
    try:
        written = record.link.send_nowait_raw(frame)
    except OSError as exc:
        # None of them reached the instance whole: the teardown requeues them all
        # (the first as the one being sent, the rest as not possibly started).
        record.sending = inv
        _send_failed(pool, record, exc)
        return True
    if written == len(frame):
        return True
    # Part of the data (maybe none of it) is on the wire: the serving task
    # writes the rest of the frame cut short, waiting for room, and that request
    # stays marked as sending until then; requests after it go back to the queue.
    start = 0
    for i, one in enumerate(frames):
        if written < start + len(one):
            record.sending = taken[i]
            record.unsent = one[written - start :]
            if i + 1 < len(taken):
                _untake(pool, record, taken[i + 1 :])
                count_credits(pool, record)
            return True
        start += len(one)
    raise AssertionError("a partial write covered every frame")


async def _read_frames(
    pool: FunctionPool,
    record: InstanceRecord,
    pulled: Callable[[int], None],
    settle: Callable[[], None],
    clock: Callable[[], float],
) -> None:
    """Read the worker's frames: results complete their requests, PULLs give credit.

    ``settle`` runs once the frames of a read are handled: requests then go
    out in one send for all the credit they brought.
    """
    link = record.link
    assert link is not None
    decoder = link.decoder
    now = clock()
    while True:
        # A frame already buffered (a PULL read with its RESULT) needs no coroutine,
        # and no new clock reading: the frames of one read share its time.
        msg = decoder.next_frame()
        if msg is None:
            settle()
            msg = await link.receive_more()
            now = clock()
        if msg is None:
            record.stop(StopReason.LINK_CLOSED)
            return
        record.last_heard = now
        kind = message_type(msg)
        if kind == RESULT:
            complete(pool, record, result_fields(msg), now)
        elif kind == PULL:
            pulled(pull_count(msg))
        # Other types are ignored: a newer worker may send more.


async def _guard_protocol(
    pool: FunctionPool,
    record: InstanceRecord,
    pulled: Callable[[int], None],
    settle: Callable[[], None],
    clock: Callable[[], float],
) -> None:
    try:
        await _read_frames(pool, record, pulled, settle, clock)
    except trio.BrokenResourceError as exc:
        if isinstance(exc.__cause__, ConnectionResetError):
            # A worker that dies with our frames unread makes Linux reset the
            # link: that is a death (its exit status says how), not a protocol error.
            record.stop(StopReason.LINK_CLOSED)
            return
        _link_broken(pool, record, exc)
    except (ProtocolError, OSError) as exc:
        _link_broken(pool, record, exc)


def _link_broken(pool: FunctionPool, record: InstanceRecord, exc: Exception) -> None:
    pool.counters[PoolCounter.LINK_ERRORS] += 1
    log.warning("instance link broken", function=pool.name, instance=record.id, error=str(exc))
    record.stop(StopReason.PROTOCOL_BROKEN, exc)


# --- node-level operations -------------------------------------------------
