"""The bounded building blocks: replay buffer, resource store/digest, result table."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.delta import CommandResultTable, LimitExceeded, ReplayBuffer, ResourceStore
from protocol.delta.resources import digest_of, entry_hash

# --- replay buffer ----------------------------------------------------------------------


def filled(n: int, **bounds: int) -> ReplayBuffer:
    buf = ReplayBuffer(**{"max_frames": 100, "max_bytes": 10_000, **bounds})
    for seq in range(1, n + 1):
        buf.append(seq, f"frame-{seq}".encode())
    return buf


def test_replay_keeps_unacked_frames_in_order() -> None:
    buf = filled(5)
    buf.ack(2)
    assert (buf.first_seq, buf.last_seq, buf.next_seq, len(buf)) == (3, 5, 6, 3)
    assert buf.frames_from(4) == [b"frame-4", b"frame-5"]
    assert buf.frames_from(6) == []  # resume at next_seq: nothing to replay
    assert not buf.can_resume_from(2) and not buf.can_resume_from(7)
    with pytest.raises(ValueError):
        buf.frames_from(2)


def test_replay_is_bounded_by_count_and_bytes() -> None:
    buf = filled(10, max_frames=4)
    assert (len(buf), buf.first_seq, buf.evicted) == (4, 7, 6)
    buf = filled(10, max_bytes=24)  # 7-8 bytes per frame: three fit
    assert len(buf) == 3 and buf.nbytes <= 24
    big = ReplayBuffer(max_frames=4, max_bytes=4)
    big.append(1, b"larger than the buffer")
    assert len(big) == 0 and big.first_seq == big.next_seq == 2


def test_replay_refuses_out_of_order_append_and_clear_keeps_numbering() -> None:
    buf = filled(3)
    with pytest.raises(ValueError):
        buf.append(5, b"x")
    buf.clear()
    assert (len(buf), buf.nbytes, buf.first_seq, buf.next_seq) == (0, 0, 4, 4)


# --- resources and digest ----------------------------------------------------------------


def test_entry_hash_matches_the_spec_test_vector() -> None:
    # PROTOCOL.md §Digest test vector, computed independently here.
    raw = b"\x00\x08\x00\x05" + (7).to_bytes(8, "big") + b"function" + b"hello"
    expected = int.from_bytes(hashlib.sha256(raw).digest()[:16], "big")
    assert entry_hash("function", "hello", 7) == expected
    assert f"{expected:032x}" == "dbe4ba444c3861e69af96f5b267cc342"
    pair = [("function", "hello", 7), ("image", "sha256:ab", 3)]
    assert f"{entry_hash(*pair[1]):032x}" == "5488985479e257691de5e2fe8369d6f5"
    assert digest_of(iter(pair)).hex() == "306d5298c61ab94fb8df5259a9e69a37"  # sum mod 2^128


def test_apply_is_idempotent_and_ignores_older_versions() -> None:
    store: ResourceStore[str] = ResourceStore()
    assert store.upsert("function", "f", 2, "v2")
    assert not store.upsert("function", "f", 2, "again")
    assert not store.upsert("function", "f", 1, "older")
    assert not store.remove("function", "f", 2)
    assert store.get("function", "f") == (2, "v2")
    assert store.remove("function", "f", 3)
    assert not store.remove("function", "f", 4)  # absent: nothing to do
    assert len(store) == 0 and store.digest() == bytes(16)


@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 4), st.integers(1, 30), st.booleans())
    )
)
def test_incremental_digest_equals_recomputed_and_is_order_free(
    ops: list[tuple[str, int, int, bool]],
) -> None:
    store: ResourceStore[None] = ResourceStore()
    for kind, n, version, upsert in ops:
        if upsert:
            store.upsert(kind, f"n{n}", version, None)
        else:
            store.remove(kind, f"n{n}", version)
    assert store.digest() == store.recompute_digest()
    entries = [(k, n, v) for k, n, v, _ in store.entries()]
    random.Random(1).shuffle(entries)
    assert digest_of(iter(entries)) == store.digest()


def test_digest_tells_versions_and_keys_apart() -> None:
    a: ResourceStore[None] = ResourceStore()
    b: ResourceStore[None] = ResourceStore()
    a.upsert("function", "ab", 1, None)
    b.upsert("functiona", "b", 1, None)  # same concatenation, different key
    assert a.digest() != b.digest()
    b = ResourceStore()
    b.upsert("function", "ab", 2, None)
    assert a.digest() != b.digest()


def test_bounded_store_refuses_new_keys_beyond_its_bound() -> None:
    store: ResourceStore[None] = ResourceStore(max_items=2)
    store.upsert("k", "a", 1, None)
    store.upsert("k", "b", 1, None)
    store.upsert("k", "a", 2, None)  # replacing is fine
    with pytest.raises(LimitExceeded):
        store.upsert("k", "c", 1, None)


# --- command result table ---------------------------------------------------------------


def test_result_table_evicts_finished_oldest_first_never_running() -> None:
    table = CommandResultTable(3)
    table.start("a")
    table.start("b")
    table.finish("b", b"B")
    table.start("c")
    table.finish("c", b"C")
    table.start("d")  # full: evicts "b", the oldest finished one
    assert table.lookup("b") is None and table.lookup("c") == b"C"
    assert table.is_running("a") and table.is_running("d") and table.evicted == 1
    table.start("e")  # evicts "c"
    with pytest.raises(LimitExceeded):
        table.start("f")  # three running, nothing evictable
    assert not table.finish("zzz", b"")


def test_result_table_store_records_an_immediate_outcome() -> None:
    table = CommandResultTable(2)
    table.store("x", b"unsupported")
    assert table.lookup("x") == b"unsupported" and table.running == 0
