"""Instance output rate limits (issue 11, finding 10): the buckets, with a fake clock."""

from __future__ import annotations

from huselet.runtime.output import MAX_LINE, OutputLimiter, OutputStats


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_over_the_burst_are_dropped_and_counted_then_refilled() -> None:
    clock, stats = Clock(), OutputStats()
    limiter = OutputLimiter(lines_per_s=10, lines_burst=20, clock=clock, stats=stats)
    kept = [limiter.admit(b"x") for _ in range(50)]
    assert sum(k is not None for k in kept) == 20
    assert limiter.dropped_lines == 30 and stats.dropped_lines == 30 and stats.dropped_bytes == 30
    clock.now += 1.0  # ten more lines' worth
    assert sum(limiter.admit(b"y") is not None for _ in range(50)) == 10
    assert stats.logged_lines == 30 and stats.dropped_lines == 70


def test_bytes_are_limited_and_long_lines_truncated() -> None:
    clock, stats = Clock(), OutputStats()
    limiter = OutputLimiter(bytes_per_s=1000, bytes_burst=10_000, clock=clock, stats=stats)
    first = limiter.admit(b"a" * 100_000)
    assert first is not None and len(first) == MAX_LINE and stats.truncated_lines == 1
    assert limiter.admit(b"b" * 5000) is not None
    assert limiter.admit(b"c" * 2000) is None  # 10_000 - 4096 - 5000 left: 904
    assert stats.dropped_bytes == 2000


def test_a_notice_summarises_the_drops_at_most_every_interval() -> None:
    clock = Clock()
    limiter = OutputLimiter(lines_per_s=1, lines_burst=1, clock=clock, stats=OutputStats())
    assert limiter.notice_due() is None  # nothing dropped
    for _ in range(5):
        limiter.admit(b"z")
    assert limiter.notice_due() == (4, 4)  # the first drop is told at once
    limiter.admit(b"z")
    assert limiter.notice_due() is None  # then not before the interval
    clock.now += 5.0
    limiter.admit(b"z")
    limiter.admit(b"z")
    assert limiter.notice_due() == (2, 2)  # one refilled token, the rest dropped
    assert limiter.notice_due(final=True) is None  # nothing new
