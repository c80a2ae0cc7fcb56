"""Errors a function may raise to choose what its caller sees.

Kept import-free (beyond the standard library's builtins) because function
code imports it at cold start: ``from huselet.worker import HTTPError``.
"""

from __future__ import annotations


class HTTPError(Exception):
    """Raise from a handler to answer with ``status`` and a JSON error body.

    ``raise HTTPError(404, "no such user")`` gives the caller a 404 with
    ``{"error": {"code": "http_error", "type": "HTTPError", "message": "no such
    user"}}``. Only 4xx and 5xx statuses are accepted: a success is a return
    value, not an exception.
    """

    def __init__(self, status: int, message: str = "") -> None:
        if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
            raise ValueError(f"HTTPError status must be an integer in 400..599, not {status!r}")
        super().__init__(message)
        self.status = status
        self.message = message
