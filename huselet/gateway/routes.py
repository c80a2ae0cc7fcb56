"""Routing and header interpretation of the HTTP ingress.

Pure functions over the parsed request head: which route a request targets, which
headers it carries, what kind its body is, whether its bearer token is right.
Nothing here does I/O, so every rule can be read (and tested) in one place.
Patterns are compiled once at import and work on bytes, the form the parser hands
out, so the hot path never decodes or compiles anything it does not need.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from huselet.errors import BadRequest, Unauthorized, UnknownFunction
from huselet.gateway.admission_throttle import Strikes
from huselet.gateway.httpparse import RequestHead as ParsedHead
from huselet.gateway.responses import MethodNotAllowed, NotFound
from huselet.observe.ids import new_request_id as new_request_id  # re-exported
from protocol.link import KIND_BYTES, KIND_JSON

INVOKE_PREFIX = b"/v1/invoke/"
HEALTHZ_PATH = b"/healthz"
# Same rule as huselet.config.functions.FUNCTION_NAME, on bytes: a name that cannot be configured
# cannot exist, so anything else is a 404 rather than a 400.
_FUNCTION_NAME = re.compile(rb"[a-z0-9][a-z0-9_-]{0,62}")
_CLIENT_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")
# Far beyond any sensible deadline, and it keeps int() of hostile input cheap.
_MAX_TIMEOUT_DIGITS = 12


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # "healthz" or "invoke"
    function: str = ""
    # Invoke only: the path under the function ("" when there is none, else
    # "/..."). Only HTTP functions take one, or any method but POST; the
    # ingress checks that once it knows the function (Invoker.takes_http).
    subpath: bytes = b""


HEALTHZ = Route("healthz")


def match_route(method: bytes, target: bytes) -> Route:
    """The route for ``method`` and ``target``; NotFound/MethodNotAllowed otherwise."""
    path = target.partition(b"?")[0]  # a query string is allowed and ignored
    if path == HEALTHZ_PATH:
        if method == b"GET" or method == b"HEAD":
            return HEALTHZ
        raise MethodNotAllowed(b"GET, HEAD")
    if path.startswith(INVOKE_PREFIX):
        name, slash, rest = path[len(INVOKE_PREFIX) :].partition(b"/")
        if _FUNCTION_NAME.fullmatch(name) is None:
            raise UnknownFunction(
                "not a valid function name (lowercase letters, digits, - and _, at most 63)"
            )
        return Route("invoke", name.decode("ascii"), slash + rest)
    raise NotFound("no such path")


def check_plain_invoke(method: bytes, route: Route) -> None:
    """A function that does not take HTTP events: ``POST /v1/invoke/{function}`` only."""
    if route.subpath:
        raise NotFound(
            f"function {route.function!r} takes no path after its name (only functions with "
            'events = "http", or apps, do)'
        )
    if method != b"POST":
        raise MethodNotAllowed(b"POST")


@dataclass(slots=True)
class RequestHead:
    """What the ingress needs from one request's head, gathered in one pass."""

    method: bytes
    target: bytes
    request_id: str
    content_type: bytes = b""
    content_length: int | None = None
    chunked: bool = False
    authorization: bytes | None = None
    timeout_ms: bytes | None = None
    # Name of a header that must appear once but came several times.
    repeated: bytes | None = None
    # Request line and header bytes (without separators). The parser bounds only heads
    # that arrive in pieces; one that arrives in a single read is measured here.
    size: int = 0
    # All headers as the parser returned them (names lower-cased), by reference: HTTP
    # functions get them forwarded.
    headers: Sequence[tuple[bytes, bytes]] = ()
    client: str = ""  # the peer's IP address, set by the connection
    # The connection's consecutive throttled replies (admission_throttle), set by it.
    strikes: Strikes | None = None
    fd: int = -1  # the connection's socket, which a held 429 watches (PeerWatch), set by it
    traceparent: bytes | None = None  # W3C trace context, validated where it is used

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


_SINGLE_HEADERS = {
    b"content-type": "content_type",
    b"authorization": "authorization",
    b"x-huselet-timeout-ms": "timeout_ms",
}


def read_head(request: ParsedHead) -> RequestHead:
    """Collect the headers the ingress acts on (the parser has already validated framing)."""
    head = RequestHead(request.method, request.target, "")
    client_id: bytes | None = None
    size = len(request.method) + len(request.target)
    for name, value in request.headers:  # names come lower-cased from the parser
        size += len(name) + len(value)
        field = _SINGLE_HEADERS.get(name)
        if field is not None:
            if getattr(head, field) not in (None, b""):
                head.repeated = name
            setattr(head, field, value)
        elif name == b"content-length":
            head.content_length = int(value)  # llhttp checked it is digits and unambiguous
        elif name == b"transfer-encoding":
            head.chunked = True  # the parser accepts only "chunked" and rejects the rest
        elif name == b"x-request-id" or name == b"x-huselet-request-id":
            client_id = value
        elif name == b"traceparent":
            head.traceparent = value
    head.size = size
    head.headers = request.headers  # the parser's list of (name, value)
    if client_id is not None and _CLIENT_REQUEST_ID.fullmatch(client_id):
        head.request_id = client_id.decode("ascii")
    else:
        head.request_id = new_request_id()
    return head


def event_kind(content_type: bytes) -> str:
    """``json`` for application/json and any ``type/subtype+json``, else ``bytes``."""
    media = content_type.partition(b";")[0].strip().lower()
    if media == b"application/json":
        return KIND_JSON
    major, slash, minor = media.partition(b"/")
    if slash and major and minor.endswith(b"+json") and len(minor) > len(b"+json"):
        return KIND_JSON
    return KIND_BYTES


def parse_timeout_ms(raw: bytes | None) -> int | None:
    """The caller's deadline in ms from ``X-Huselet-Timeout-Ms``; BadRequest if invalid."""
    if raw is None:
        return None
    # isdigit() on bytes is ASCII-only: no sign, spaces, underscores or other scripts.
    if not raw.isdigit() or len(raw) > _MAX_TIMEOUT_DIGITS or int(raw) == 0:
        raise BadRequest("X-Huselet-Timeout-Ms must be a positive integer (milliseconds)")
    return int(raw)


def check_bearer(authorization: bytes | None, token: bytes) -> None:
    """Raise Unauthorized unless ``authorization`` is ``Bearer <token>``."""
    if authorization is None:
        raise Unauthorized("missing bearer token")
    scheme, _, credentials = authorization.partition(b" ")
    # compare_digest: the time taken must not reveal how much of the token matched.
    if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials.strip(), token):
        raise Unauthorized("invalid bearer token")
