"""The instance link handshake against hostile peers (issue 11, finding 7).

A real pool, link server and Unix sockets; the runtime is a *held* one that
starts nothing, so the test itself plays the worker of an instance whose id
and token it knows — the only way to check the token check for real (an
instance whose worker already connected has spent its token anyway).
"""

from __future__ import annotations

import socket as pysocket
from pathlib import Path
from typing import Any

import pytest
import trio
from support import NodeStack, tampered, write_package

import huselet.dispatch.links
from huselet.dispatch.instance import InstanceState
from huselet.metrics.instances import InstanceMetrics
from huselet.runtime.base import ExitStatus, InstanceHandle, InstanceSpec, Runtime, StartFailed
from huselet.runtime.children import dial_link
from protocol.frames import FrameDecoder, encode_frame
from protocol.link import READY_FRAME, Hello, Pull

SOURCE = "def handler(event, context):\n    return {'event': event}\n"


class HeldHandle(InstanceHandle):
    def __init__(self, spec: InstanceSpec) -> None:
        self.instance_id = spec.instance_id
        self.pid = None
        self._gone = trio.Event()

    async def wait(self) -> ExitStatus:
        await self._gone.wait()
        return ExitStatus(code=0)

    def kill(self) -> None:
        self._gone.set()


class HeldRuntime(Runtime):
    """Starts nothing: records each spec so the test can connect as its worker."""

    name = "process"

    def __init__(self, node: Any) -> None:
        super().__init__({}, node=node)
        self.specs: list[InstanceSpec] = []
        self.started = trio.Event()

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        self.specs.append(spec)
        self.started.set()
        return HeldHandle(spec)


async def _connect(path: Path) -> trio.socket.SocketType:
    sock = trio.socket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    await sock.connect(str(path))
    return sock


async def _hello_on(sock: trio.socket.SocketType, instance_id: str, token: str) -> dict | None:
    """Say HELLO on ``sock``; the first frame back (None: closed without a word)."""
    await sock.send(encode_frame(Hello(1, instance_id, token, 4242).encode()))
    dec = FrameDecoder()
    with trio.fail_after(30):
        while (frame := dec.next_frame()) is None:
            chunk = await sock.recv(65536)
            if not chunk:
                return None
            dec.receive_data(chunk)
    return frame


async def _hello(
    path: Path, instance_id: str, token: str
) -> tuple[dict | None, trio.socket.SocketType]:
    """Say HELLO; the first frame back (None: closed without a word) and the socket."""
    sock = await _connect(path)
    return await _hello_on(sock, instance_id, token), sock


class _Stack:
    def __init__(self, root: Path, names: list[str]) -> None:
        for name in names:
            write_package(root, name, SOURCE)
        self.node = NodeStack(
            root,
            [
                {"name": n, "package": str(root / "pkgs" / n), "handler": "main:handler"}
                for n in names
            ],
        )
        self.held = HeldRuntime(self.node.config.node)
        self.node.runtimes["process"] = self.held  # the scheduler reads this mapping at run

    async def run(self, nursery: trio.Nursery, names: list[str]) -> None:
        await nursery.start(self.node.links.run, names)
        await nursery.start(self.node.dispatcher.run)

    async def held_spec(self, nursery: trio.Nursery, function: str) -> InstanceSpec:
        """Start one instance of ``function`` (a request makes it) and return its spec."""
        seen = len(self.held.specs)
        nursery.start_soon(self._invoke, function)
        with trio.fail_after(30):
            while len(self.held.specs) == seen:
                await trio.sleep(0.01)
        return self.held.specs[-1]

    async def _invoke(self, function: str) -> None:
        try:
            await self.node.dispatcher.invoke(function, b"{}", "json")
        except Exception:
            pass


async def test_known_instance_with_a_wrong_token_gets_only_a_close(short_tmp: Path) -> None:
    stack = _Stack(short_tmp, ["echo", "other"])
    async with trio.open_nursery() as nursery:
        await stack.run(nursery, ["echo", "other"])
        spec = await stack.held_spec(nursery, "echo")
        path = stack.node.links.socket_path("echo")
        record = stack.node.pool("echo").instances[spec.instance_id]
        assert record.state is InstanceState.STARTING

        # The right instance id, a wrong token: no WELCOME, no REFUSED, a close.
        frame, sock = await _hello(path, spec.instance_id, tampered(spec.token))
        sock.close()
        assert frame is None
        assert stack.node.links.refused == 1
        assert record.link is None and not record.token_spent

        # Its own token on another function's socket (foreign): the same.
        frame, sock = await _hello(
            stack.node.links.socket_path("other"), spec.instance_id, spec.token
        )
        sock.close()
        assert frame is None
        assert stack.node.links.refused == 2

        # The real worker (the test, with the right token) is still welcome.
        frame, worker = await _hello(path, spec.instance_id, spec.token)
        assert frame is not None and frame["t"] == "welcome"
        await worker.send(encode_frame(READY_FRAME))
        with trio.fail_after(30):
            while record.state is InstanceState.STARTING:
                await trio.sleep(0.01)

        # The same id and token again (read from the worker's environ): spent.
        frame, sock = await _hello(path, spec.instance_id, spec.token)
        sock.close()
        assert frame is None
        assert stack.node.links.refused == 3
        assert record.token_spent
        worker.close()
        nursery.cancel_scope.cancel()


async def test_a_replayed_token_gets_no_welcome_even_before_ready(short_tmp: Path) -> None:
    stack = _Stack(short_tmp, ["echo"])
    async with trio.open_nursery() as nursery:
        await stack.run(nursery, ["echo"])
        spec = await stack.held_spec(nursery, "echo")
        path = stack.node.links.socket_path("echo")
        frame, worker = await _hello(path, spec.instance_id, spec.token)
        assert frame is not None and frame["t"] == "welcome"
        # Still STARTING (no READY yet): a second HELLO with the same token.
        frame, sock = await _hello(path, spec.instance_id, spec.token)
        sock.close()
        assert frame is None
        worker.close()
        nursery.cancel_scope.cancel()


async def test_silent_connections_to_one_function_do_not_hold_up_another(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Silent peers are held as long as they like here, so only slot separation
    # (not the HELLO deadline turning them over) can let the victim through.
    monkeypatch.setattr(huselet.dispatch.links, "HELLO_TIMEOUT_S", 600.0)
    stack = _Stack(short_tmp, ["noisy", "victim"])
    async with trio.open_nursery() as nursery:
        await stack.run(nursery, ["noisy", "victim"])
        noisy_path = stack.node.links.socket_path("noisy")
        silent = []
        for _ in range(200):
            try:
                silent.append(await _connect(noisy_path))
            except BlockingIOError:  # the noisy socket's backlog is full: enough
                break
        spec = await stack.held_spec(nursery, "victim")
        frame, worker = await _hello(
            stack.node.links.socket_path("victim"), spec.instance_id, spec.token
        )
        assert frame is not None and frame["t"] == "welcome"
        # None of the silent peers was closed to make room.
        for sock in silent:
            with pytest.raises(BlockingIOError):
                sock._sock.recv(1, pysocket.MSG_DONTWAIT)
        for sock in silent:
            sock.close()
        worker.close()
        nursery.cancel_scope.cancel()


async def _start_fails(stack: _Stack, nursery: trio.Nursery, worker: Any) -> dict[str, int]:
    """Start an instance of "echo", let ``worker(spec, record)`` play it: the failures seen."""
    await stack.run(nursery, ["echo"])
    pool = stack.node.pool("echo")
    pool.observer = metrics = InstanceMetrics()
    spec = await stack.held_spec(nursery, "echo")
    await worker(spec, pool.instances[spec.instance_id])
    with trio.fail_after(30):
        while pool.counters["start_failures"] == 0:
            await trio.sleep(0.01)
    nursery.cancel_scope.cancel()
    return dict(metrics.functions["echo"].failures)


async def test_a_worker_that_exits_before_connecting_fails_its_start_as_a_crash(
    short_tmp: Path,
) -> None:
    # The held handle cannot call back on exit: the pool waits for it in a task.
    async def exit_unlinked(spec: InstanceSpec, record: Any) -> None:
        record.handle.kill()  # it "exits" with no link ever dialled

    stack = _Stack(short_tmp, ["echo"])
    async with trio.open_nursery() as nursery:
        failures = await _start_fails(stack, nursery, exit_unlinked)
    error = stack.node.pool("echo").last_start_error
    assert error == "the worker exited with code 0 before connecting"
    assert failures == {"crash": 1}


async def test_a_worker_that_sends_something_else_before_ready_fails_as_a_crash(
    short_tmp: Path,
) -> None:
    stack = _Stack(short_tmp, ["echo"])
    sockets = []

    async def pull_first(spec: InstanceSpec, record: Any) -> None:
        path = stack.node.links.socket_path("echo")
        frame, worker = await _hello(path, spec.instance_id, spec.token)
        assert frame is not None and frame["t"] == "welcome"
        sockets.append(worker)
        await worker.send(encode_frame(Pull(1).encode()))

    async with trio.open_nursery() as nursery:
        failures = await _start_fails(stack, nursery, pull_first)
    assert "before ready" in (stack.node.pool("echo").last_start_error or "")
    assert failures == {"crash": 1}
    sockets[0].close()


async def test_a_link_dialled_in_process_is_a_pair_with_the_same_handshake(
    short_tmp: Path,
) -> None:
    # A runtime dialling the daemon's own link socket gets a socket pair (no
    # connect, no accept); the token check and WELCOME are the link server's.
    stack = _Stack(short_tmp, ["echo"])
    async with trio.open_nursery() as nursery:
        await stack.run(nursery, ["echo"])
        spec = await stack.held_spec(nursery, "echo")
        record = stack.node.pool("echo").instances[spec.instance_id]
        deadline = trio.current_time() + 30

        wrong = trio.socket.from_stdlib_socket(await dial_link(spec.link_socket, deadline))
        assert wrong.getpeername() == ""  # a pair: no address (a connection has the path)
        assert await _hello_on(wrong, spec.instance_id, tampered(spec.token)) is None
        wrong.close()
        assert stack.node.links.refused == 1 and not record.token_spent

        worker = trio.socket.from_stdlib_socket(await dial_link(spec.link_socket, deadline))
        frame = await _hello_on(worker, spec.instance_id, spec.token)
        assert frame is not None and frame["t"] == "welcome"
        await worker.send(encode_frame(READY_FRAME) + encode_frame(Pull(1).encode()))
        with trio.fail_after(30):
            while record.state is InstanceState.STARTING:
                await trio.sleep(0.01)
        assert record.ready_at is not None  # ready (and given the queued request)
        worker.close()
        nursery.cancel_scope.cancel()
    # The server stopped: a dial connects again (and finds nobody listening).
    with pytest.raises(StartFailed):
        await dial_link(spec.link_socket, trio.current_time() + 1)
