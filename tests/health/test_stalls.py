"""LoopStalls and the lag probe at its 1 s default: a stall between two reports is
still seen (the probe used to wake every 100 ms to catch it), and an idle loop
reports the stall whether it blocked a run batch or the wake-up."""

from __future__ import annotations

import time

import trio

from huselet.health.counters import HealthCounter
from huselet.health.lag import LagProbe
from huselet.health.stalls import LoopStalls
from huselet.health.supervisor import HealthState, HealthSupervisor, LoopReport

WAIT_S = 30.0  # bound of every wait on a condition: it only ends a failing test


async def next_sample(report: LoopReport) -> None:
    seen = report.counters[HealthCounter.SAMPLES]
    with trio.fail_after(WAIT_S):
        while report.counters[HealthCounter.SAMPLES] == seen:
            await trio.sleep(0.01)


async def test_a_stall_between_two_reports_is_reported() -> None:
    """The stall starts right after a report and ends long before the next one is
    due: the report's timer is not late, the stall is seen all the same."""
    lag = LagProbe()  # the default: a report a second
    assert lag.period_s == 1.0
    supervisor = HealthSupervisor([lag])
    report = supervisor.reports["event_loop"]
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await next_sample(report)
        time.sleep(0.3)  # the fault: a blocking call on the event loop, 300 ms
        await next_sample(report)
        assert lag.last_lag_ms >= 300
        assert report.state is HealthState.DEGRADED
        assert "event loop lag" in report.detail
        nursery.cancel_scope.cancel()


async def test_the_instrument_is_removed_with_the_probe() -> None:
    lag = LagProbe(period_s=0.05)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lag.run, LoopReport("event_loop"))
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    # Removing it again raises: the probe's finally already did.
    try:
        trio.lowlevel.remove_instrument(lag.stalls)
    except KeyError:
        pass
    else:
        raise AssertionError("the probe left its instrument installed")


async def test_a_long_run_batch_and_a_late_io_wait_are_both_stalls() -> None:
    stalls = LoopStalls()
    trio.lowlevel.add_instrument(stalls)
    try:
        await trio.sleep(0.01)
        stalls.take()
        time.sleep(0.2)  # a run batch of 200 ms
        await trio.lowlevel.checkpoint()
        assert stalls.take() >= 0.2
    finally:
        trio.lowlevel.remove_instrument(stalls)
    # The overshoot of an I/O wait, as the hooks see it (no real starvation needed).
    stalls.before_io_wait(0.05)
    time.sleep(0.2)  # epoll came back 150 ms after its 50 ms timeout
    stalls.after_io_wait(0.05)
    assert stalls.take() >= 0.15
