"""Typed errors of the daemon. Each maps to exactly one HTTP status and code.

The ingress turns any :class:`HuseletError` into a reply without knowing the
concrete class: ``status`` is the HTTP status, ``code`` a stable machine-readable
name, ``str(exc)`` the message for humans. Messages must never contain host
paths or daemon stack frames: they go to callers.
"""

from __future__ import annotations


class HuseletError(Exception):
    """Base of every error the daemon reports to a caller or operator."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class ConfigError(HuseletError):
    """The TOML configuration is invalid; carries the key path."""

    code = "config"

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


class BadRequest(HuseletError):
    status, code = 400, "bad_request"


class Unauthorized(HuseletError):
    status, code = 401, "unauthorized"


class UnknownFunction(HuseletError):
    status, code = 404, "unknown_function"


class PayloadTooLarge(HuseletError):
    status, code = 413, "payload_too_large"


class QueueFull(HuseletError):
    status, code = 429, "queue_full"


class HandlerError(HuseletError):
    """The function's own code raised; ``error_type`` is the exception's class name."""

    status, code = 502, "handler_error"

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class HandlerStatusError(HandlerError):
    """The function's code raised ``HTTPError(status, message)``: that status, not 502."""

    code = "http_error"

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(error_type, message)
        self.status = status


class InstanceLost(HuseletError):
    """The instance serving the request died or broke the link mid-request."""

    status, code = 502, "instance_lost"


class InstanceStartFailed(HuseletError):
    """No instance could be started for the function (import error, runtime failure…)."""

    status, code = 502, "instance_start_failed"


class Draining(HuseletError):
    status, code = 503, "draining"


class Unavailable(HuseletError):
    status, code = 503, "unavailable"


class DeadlineExceeded(HuseletError):
    status, code = 504, "deadline_exceeded"


class HostLimitReached(HuseletError):
    """A new instance was refused: the host (or a limit set for it) has no room.

    Not the function's fault, so its circuit breaker stays closed; the
    caller may retry once something on the node ended.
    """

    status, code = 503, "host_limit"
