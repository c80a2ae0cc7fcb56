"""The systemd notify protocol (sd_notify(3)), without libsystemd.

When systemd starts a ``Type=notify`` service it sets ``NOTIFY_SOCKET`` to a
datagram socket path (``@`` prefix: abstract namespace). Each notification is
one datagram of newline-separated ``KEY=VALUE`` pairs: ``READY=1``,
``STOPPING=1``, ``STATUS=…``, ``WATCHDOG=1``. Without ``NOTIFY_SOCKET`` every
call is a no-op, so the daemon runs the same in a terminal.
"""

from __future__ import annotations

import os
import socket

from huselet.log import get_logger

log = get_logger("notify")


class SystemdNotifier:
    def __init__(self, address: str | None) -> None:
        self.address: str | bytes | None = None
        self._sock: socket.socket | None = None
        if not address:
            return
        if address.startswith("@"):
            self.address = "\0" + address[1:]
        elif address.startswith("/"):
            self.address = address
        else:
            log.warning("NOTIFY_SOCKET ignored: not a path or abstract name", value=address[:100])
            return
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)

    @classmethod
    def from_env(cls) -> SystemdNotifier:
        address = os.environ.get("NOTIFY_SOCKET")
        # Children (instances) must not inherit the right to speak for the service.
        os.environ.pop("NOTIFY_SOCKET", None)
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, **fields: str) -> bool:
        """Send one notification; return False (and log) if it could not be sent."""
        if self._sock is None or self.address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._sock.sendto(message.encode("utf-8"), self.address)
        except OSError as exc:
            # systemd gone or the socket full: the daemon serves on regardless.
            log.warning("sd_notify failed", error=str(exc))
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify(READY="1", STATUS=status)

    def stopping(self, status: str) -> bool:
        return self.notify(STOPPING="1", STATUS=status)

    def status(self, status: str) -> bool:
        return self.notify(STATUS=status)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
