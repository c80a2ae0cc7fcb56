"""Typed errors of the admin socket, on both its ends. One base: :class:`AdminError`.

The server raises :class:`AdminSocketInUse` at start; the blocking client
(:mod:`huselet.admin.client`) raises the others so the CLI can print one clear
line per failure instead of a socket traceback. They derive from
:class:`~huselet.errors.HuseletError` so the daemon's start-up path, which
already reports any ``HuseletError`` as a one-line message, needs no special case.
These messages go to the local operator, never to function callers, so naming
the socket path in them is intended.
"""

from __future__ import annotations

from huselet.errors import HuseletError


class AdminError(HuseletError):
    """Base of every admin-socket failure."""

    code = "admin"


class AdminSocketInUse(AdminError):
    """Another live process (another huselet) already listens on the admin socket."""

    code = "admin_socket_in_use"


class AdminUnavailable(AdminError):
    """The daemon cannot be reached: not running, stale socket, timed out or hung up."""

    code = "unavailable"


class AdminForbidden(AdminError):
    """The daemon (or the socket's file permissions) refused this user."""

    code = "forbidden"


class AdminProtocolError(AdminError):
    """The other end sent something that is not a valid admin frame."""

    code = "protocol"


class AdminCommandError(AdminError):
    """The daemon ran (or refused to run) the command and answered with an error.

    ``code`` is the daemon's machine-readable code (``unknown_command``,
    ``bad_request``, a :class:`HuseletError` code, ``internal``...).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        # An instance attribute shadows the class default: each reply brings its own code.
        self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
