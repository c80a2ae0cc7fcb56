"""Fixtures shared by the observe tests."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest

from huselet.observe.ring import LogRing


@pytest.fixture
def attach_ring() -> Iterator[Callable[[LogRing], LogRing]]:
    """Attach log rings to the ``huselet`` logger at info for one test, as the daemon does."""
    root = logging.getLogger("huselet")
    old_level = root.level
    attached: list[LogRing] = []

    def attach(ring: LogRing) -> LogRing:
        root.setLevel(logging.INFO)
        root.addHandler(ring)
        attached.append(ring)
        return ring

    try:
        yield attach
    finally:
        for ring in attached:
            root.removeHandler(ring)
        root.setLevel(old_level)
