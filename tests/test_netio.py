"""FastSocket over real socket pairs: data, EOF, broken and closed sockets, fairness."""

from __future__ import annotations

import errno
import socket

import pytest
import trio
import trio.testing

from huselet.netio import MAX_READ, YIELD_EVERY, FastSocket

DEADLINE_S = 30


def pair() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    return trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


async def test_reads_what_was_sent_and_an_empty_read_at_eof() -> None:
    a, b = pair()
    with a, b, trio.fail_after(DEADLINE_S):
        await FastSocket(a).send_all(b"hello")
        assert await FastSocket(b).receive_some(100) == b"hello"
        a.shutdown(socket.SHUT_WR)
        assert await FastSocket(b).receive_some(100) == b""


async def test_a_write_larger_than_the_socket_buffer_waits_for_the_reader() -> None:
    a, b = pair()
    data = bytes(range(256)) * (16 << 10)  # 4 MiB: many socket buffers
    received = bytearray()
    with a, b, trio.fail_after(DEADLINE_S):

        async def read_all() -> None:
            reader = FastSocket(b)
            while len(received) < len(data):
                chunk = await reader.receive_some(1 << 20)
                assert chunk
                assert len(chunk) <= MAX_READ
                received.extend(chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await FastSocket(a).send_all(data)
    assert bytes(received) == data


async def test_a_read_waits_for_data_and_can_be_cancelled() -> None:
    a, b = pair()
    with a, b, trio.fail_after(DEADLINE_S):
        with trio.move_on_after(0.01) as scope:
            await FastSocket(b).receive_some(10)
        assert scope.cancelled_caught
        async with trio.open_nursery() as nursery:
            got: list[bytes] = []

            async def read() -> None:
                got.append(await FastSocket(b).receive_some(10))

            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            await FastSocket(a).send_all(b"late")
        assert got == [b"late"]


async def test_writing_to_a_vanished_peer_is_a_broken_resource_with_the_cause() -> None:
    a, b = pair()
    with a:
        b.close()
        with pytest.raises(trio.BrokenResourceError) as caught:
            await FastSocket(a).send_all(b"x")
        assert isinstance(caught.value.__cause__, BrokenPipeError)
        with pytest.raises(trio.BrokenResourceError):
            FastSocket(a).write_now(b"x")
        # Without waiting: the plain OSError, as the heartbeat expects.
        with pytest.raises(OSError) as raw:
            FastSocket(a).send_nowait(b"x")
        assert raw.value.errno == errno.EPIPE


async def test_a_socket_closed_here_is_a_closed_resource() -> None:
    a, b = pair()
    with b:
        a.close()
        with pytest.raises(trio.ClosedResourceError):
            await FastSocket(a).receive_some(10)
        with pytest.raises(trio.ClosedResourceError):
            await FastSocket(a).send_all(b"x")


@pytest.mark.parametrize("method", ["send_nowait", "write_now"])
async def test_writing_now_writes_what_fits_and_never_waits(method: str) -> None:
    a, b = pair()
    with a, b:
        write = getattr(FastSocket(a), method)
        total = 0
        while (n := write(b"x" * 65536)) > 0:
            total += n
        assert total > 0  # the buffer filled, then 0: no exception, no wait
        assert write(b"more") == 0


async def test_a_reader_that_never_blocks_still_lets_other_tasks_run() -> None:
    # The peer keeps the socket readable; the reader must yield now and then.
    a, b = pair()
    other_ran = 0
    with a, b, trio.fail_after(DEADLINE_S):

        async def other() -> None:
            nonlocal other_ran
            while True:
                other_ran += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            await FastSocket(a).send_all(b"x" * (YIELD_EVERY * 4))
            before = other_ran
            reader = FastSocket(b)
            for _ in range(YIELD_EVERY * 4):
                assert await reader.receive_some(1) == b"x"
            assert other_ran > before
            nursery.cancel_scope.cancel()


async def test_expect_wait_reads_data_already_there_and_what_comes_later() -> None:
    a, b = pair()
    with a, b, trio.fail_after(DEADLINE_S):
        await FastSocket(a).send_all(b"early")
        assert await FastSocket(b).receive_some(10, expect_wait=True) == b"early"
        async with trio.open_nursery() as nursery:
            got: list[bytes] = []

            async def read() -> None:
                got.append(await FastSocket(b).receive_some(10, expect_wait=True))

            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            await FastSocket(a).send_all(b"late")
        assert got == [b"late"]
        a.close()
        with pytest.raises(trio.ClosedResourceError):
            await FastSocket(a).receive_some(10, expect_wait=True)


async def test_waited_says_whether_the_last_read_had_to_wait_for_data() -> None:
    a, b = pair()
    with a, b, trio.fail_after(DEADLINE_S):
        reader = FastSocket(b)
        await FastSocket(a).send_all(b"there already")
        assert await reader.receive_some(100) == b"there already"
        assert not reader.waited  # read at once

        async def send_later() -> None:
            await trio.testing.wait_all_tasks_blocked()
            await FastSocket(a).send_all(b"later")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_later)
            assert await reader.receive_some(100) == b"later"
        assert reader.waited  # found nothing (EAGAIN) and waited
        await FastSocket(a).send_all(b"again")
        # Told to wait first, it waits even when the data is there (and says so).
        assert await reader.receive_some(100, expect_wait=True) == b"again"
        assert reader.waited


async def test_a_socket_closed_after_wrapping_is_closed_even_if_its_number_is_reused() -> None:
    # The descriptor is asked each time, never remembered: once the socket is closed,
    # a new socket that got its number must not receive this one's writes.
    a, b = pair()
    fast = FastSocket(a)
    with b:
        fd = a.fileno()
        a.close()
        c, d = pair()
        with c, d:
            assert fd in (c.fileno(), d.fileno())  # the number was reused
            with pytest.raises(OSError):
                fast.send_nowait(b"x")
            with pytest.raises(trio.ClosedResourceError):
                await fast.send_all(b"x")
            with pytest.raises(trio.ClosedResourceError):
                await fast.receive_some(10)
