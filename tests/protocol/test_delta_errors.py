"""protocol.delta.errors: one base for callers, and a distinct bye code per peer fault."""

from __future__ import annotations

import inspect

from protocol.delta import errors
from protocol.errors import ProtocolError


def _classes() -> list[type[Exception]]:
    return [
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if obj.__module__ == errors.__name__
    ]


def test_every_delta_error_shares_the_one_base() -> None:
    for cls in _classes():
        assert issubclass(cls, errors.DeltaError), cls
        # Exactly one family: a peer's fault (closes the link) or a local misuse.
        peer = issubclass(cls, errors.DeltaProtocolError)
        local = issubclass(cls, errors.DeltaUsageError)
        assert cls is errors.DeltaError or peer != local, cls
        assert not peer or issubclass(cls, ProtocolError)
        assert not local or issubclass(cls, ValueError)


def test_peer_faults_have_distinct_bye_codes() -> None:
    peer = [c for c in _classes() if issubclass(c, errors.DeltaProtocolError)]
    codes = [c.code for c in peer]
    assert len(peer) >= 10 and len(set(codes)) == len(codes)
