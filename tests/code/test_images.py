"""What a caller is told when a function's code cannot be had (huselet/code/images.py)."""

from __future__ import annotations

import pytest

from cache import errors
from huselet.code.images import caller_reason


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (errors.ImageNotFound("x is not in /srv/images"), "is not at its origin"),
        (
            errors.ImageTooLarge("GET http://h/x: 9 bytes exceed 1"),
            "is larger than this node accepts",
        ),
        (errors.DiskFull("disk full in /var/lib"), "cannot be installed: the node's disk is full"),
        (
            errors.CacheFull("no room"),
            "cannot be installed: the node's image cache is full of images in use",
        ),
        (errors.DigestMismatch("expected a"), "came corrupt from its origin"),
        (errors.CorruptImage("bad crc"), "came corrupt from its origin"),
        (
            errors.TransientFetchError("GET http://10.0.0.1/x: HTTP 503"),
            "could not be fetched: its origin is unreachable or failing",
        ),
        (
            errors.FetchError("GET http://h/x: HTTP 403"),
            "could not be fetched: its origin refused it",
        ),
    ],
)
def test_caller_reasons_name_the_failure_but_no_path_or_url(error: Exception, reason: str) -> None:
    assert caller_reason(error) == reason  # type: ignore[arg-type]


def test_a_refetch_cooldown_is_named_with_its_time() -> None:
    error = errors.TransientFetchError("GET http://10.0.0.1/x: HTTP 503 (not retrying for 4.5s)")
    assert caller_reason(error) == (
        "could not be fetched: its origin is unreachable or failing (next attempt in 4.5s)"
    )
