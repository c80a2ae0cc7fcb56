"""The systemd notify protocol against a real datagram socket."""

from __future__ import annotations

import socket
from pathlib import Path

from huselet.notify import SystemdNotifier


def test_messages_arrive_as_datagrams(short_tmp: Path) -> None:
    path = short_tmp / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(2)
    notifier = SystemdNotifier(str(path))
    assert notifier.enabled
    assert notifier.ready("serving 1 functions")
    assert receiver.recv(4096) == b"READY=1\nSTATUS=serving 1 functions"
    assert notifier.stopping("draining")
    assert receiver.recv(4096) == b"STOPPING=1\nSTATUS=draining"
    receiver.close()
    path.unlink()
    # The receiver is gone: the daemon must carry on, not raise.
    assert notifier.status("still here") is False


def test_abstract_namespace_address() -> None:
    name = f"huselet-test-{id(object())}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    receiver.settimeout(2)
    assert SystemdNotifier("@" + name).status("x")
    assert receiver.recv(100) == b"STATUS=x"


def test_disabled_without_socket() -> None:
    notifier = SystemdNotifier(None)
    assert not notifier.enabled and notifier.ready("x") is False
    assert not SystemdNotifier("relative/path").enabled
