"""HTTP events in the AWS Lambda Function URL (payload format 2.0) shape.

For ``events = "http"`` functions the worker turns the request the ingress
forwarded (:class:`protocol.link.HttpRequest` plus the raw body) into the
dict a Lambda handler written for Function URLs / API Gateway HTTP APIs
expects, and turns what the handler returns back into a status, headers and
a body — with Lambda's rules for values that are not a response dict:

- a dict with ``statusCode``: ``{statusCode, headers, cookies, body,
  isBase64Encoded}`` as given;
- any other JSON-serialisable value (dict, list, number, …): 200,
  ``application/json``, the value serialised;
- a ``str``: 200, ``application/json``, the string as the body (as Lambda);
- ``bytes`` (Python-only): 200, ``application/octet-stream``.

Imported only by HTTP functions, so its imports (base64, urllib.parse) cost
nothing elsewhere.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import parse_qsl

from protocol.link import HttpRequest

# Bodies of these media types reach the handler as text; anything else (or
# text that is not UTF-8) as base64 with isBase64Encoded, as Lambda does.
_TEXT_TYPES = (
    "text/",
    "application/json",
    "application/xml",
    "application/javascript",
    "application/x-www-form-urlencoded",
)
_TEXT_SUFFIXES = ("+json", "+xml")

HttpReply = tuple[int, list[tuple[str, str]], bytes]


class InvalidResponse(ValueError):
    """The handler's return value is not a response huselet can send."""


def is_text(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media.startswith(_TEXT_TYPES) or media.endswith(_TEXT_SUFFIXES)


def header_map(headers: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Lower-cased names; repeated headers joined with commas (cookies: with "; ")."""
    out: dict[str, str] = {}
    for name, value in headers:
        if name in out:
            out[name] += ("; " if name == "cookie" else ",") + value
        else:
            out[name] = value
    return out


def build_event(http: HttpRequest, body: bytes, request_id: str, function: str) -> dict[str, Any]:
    """The Lambda v2 HTTP event for one request."""
    headers = header_map(http.headers)
    now = time.time()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": http.path,
        "rawQueryString": http.query,
        "headers": headers,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": function,
            "domainName": headers.get("host", ""),
            "domainPrefix": headers.get("host", "").partition(".")[0],
            "http": {
                "method": http.method,
                "path": http.path,
                "protocol": "HTTP/1.1",
                "sourceIp": http.source_ip,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": False,
    }
    if "cookie" in headers:
        event["cookies"] = [c.strip() for c in headers["cookie"].split(";") if c.strip()]
    if http.query:
        params: dict[str, str] = {}
        for key, value in parse_qsl(http.query, keep_blank_values=True):
            params[key] = f"{params[key]},{value}" if key in params else value
        event["queryStringParameters"] = params
    if body:
        text = None
        if is_text(headers.get("content-type", "")):
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                text = None
        if text is None:
            event["body"] = base64.b64encode(body).decode("ascii")
            event["isBase64Encoded"] = True
        else:
            event["body"] = text
    return event


def _header_value(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise InvalidResponse(f"header {name!r} has a {type(value).__name__} value; use a string")


def to_reply(value: Any) -> HttpReply:
    """The status, headers and body for a handler's return value (Lambda's rules)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return 200, [("content-type", "application/octet-stream")], bytes(value)
    if isinstance(value, str):
        return 200, [("content-type", "application/json")], value.encode("utf-8")
    if not isinstance(value, dict) or "statusCode" not in value:
        try:
            body = json.dumps(value, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidResponse(f"the return value is not JSON-serialisable: {exc}") from None
        return 200, [("content-type", "application/json")], body
    status = value["statusCode"]
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
        raise InvalidResponse(f"statusCode must be an integer in 200..599, not {status!r}")
    headers: list[tuple[str, str]] = []
    raw_headers = value.get("headers") or {}
    if not isinstance(raw_headers, dict):
        raise InvalidResponse("headers must be a map of names to strings")
    for name, item in raw_headers.items():
        if not isinstance(name, str):
            raise InvalidResponse("header names must be strings")
        for one in item if isinstance(item, list) else [item]:
            headers.append((name, _header_value(name, one)))
    multi = value.get("multiValueHeaders") or {}  # payload 1.0, accepted for ported code
    if isinstance(multi, dict):
        for name, items in multi.items():
            for one in items if isinstance(items, list) else [items]:
                headers.append((str(name), _header_value(str(name), one)))
    cookies = value.get("cookies") or []
    if not isinstance(cookies, list) or not all(isinstance(c, str) for c in cookies):
        raise InvalidResponse("cookies must be a list of strings")
    headers.extend(("set-cookie", cookie) for cookie in cookies)
    raw_body = value.get("body")
    data: bytes
    if raw_body is None:
        data = b""
    elif isinstance(raw_body, bytes):
        data = raw_body
    elif isinstance(raw_body, str):
        if value.get("isBase64Encoded"):
            try:
                data = base64.b64decode(raw_body, validate=True)
            except ValueError as exc:
                raise InvalidResponse(
                    f"isBase64Encoded is set but body is not base64: {exc}"
                ) from None
        else:
            data = raw_body.encode("utf-8")
    else:
        raise InvalidResponse(f"body must be a string, not {type(raw_body).__name__}")
    if not any(name.lower() == "content-type" for name, _ in headers) and data:
        headers.append(("content-type", "application/json"))  # Lambda's default
    return status, headers, data
