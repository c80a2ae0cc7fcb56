"""The worker's function kinds, in process: events, results, async deadline, errors."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass
from typing import Any

import pytest

from huselet.worker import HTTPError
from huselet.worker.entries import HandlerEntry, WsgiEntry, decode_event
from huselet.worker.httpevent import InvalidResponse, build_event, to_reply
from protocol.link import (
    ERROR_DEADLINE,
    ERROR_INVALID_EVENT,
    KIND_BYTES,
    KIND_JSON,
    EntryKind,
    HttpRequest,
    Request,
)


@dataclass
class Ctx:
    request_id: str
    function_name: str = "f"
    deadline: float = 0.0


def serve(
    entry: Any,
    event: bytes,
    *,
    kind: str = KIND_JSON,
    timeout_s: float = 5.0,
    http: HttpRequest | None = None,
) -> Any:
    entry.start("f")
    req = Request("rid-1", event, kind, int(timeout_s * 1000), http)
    return entry.serve(req, Ctx("rid-1", deadline=time.monotonic() + timeout_s))


def test_nesting_beyond_the_decoder_is_an_invalid_event_not_a_crash() -> None:
    with pytest.raises(ValueError, match="nested deeper"):
        decode_event(b"[" * 100_000 + b"]" * 100_000, KIND_JSON)
    result = serve(HandlerEntry(lambda e, c: e), b"{" * 50_000)
    assert result.error.type == ERROR_INVALID_EVENT
    assert decode_event(b"[[[1]]]", KIND_JSON) == [[[1]]]


def test_a_result_nested_too_deep_is_an_invalid_result() -> None:
    def deep(event: Any, ctx: Any) -> Any:
        value: Any = []
        for _ in range(100_000):
            value = [value]
        return value

    result = serve(HandlerEntry(deep), b"{}")
    assert result.error.type == "InvalidResult"


def test_async_handler_runs_and_its_deadline_cancels_it() -> None:
    seen: list[str] = []

    async def handler(event: Any, ctx: Any) -> Any:
        try:
            await asyncio.sleep(event["sleep"])
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return {"ok": True}

    entry = HandlerEntry(handler)
    assert json.loads(serve(entry, b'{"sleep": 0}').body) == {"ok": True}
    result = serve(entry, b'{"sleep": 30}', timeout_s=0.3)
    assert result.error.type == ERROR_DEADLINE and seen == ["cancelled"]
    # The loop survives a cancelled request: the next one runs on it.
    assert serve(entry, b'{"sleep": 0}').ok


def test_a_timeout_inside_the_handler_is_not_the_deadline() -> None:
    async def handler(event: Any, ctx: Any) -> Any:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(10)

    result = serve(HandlerEntry(handler), b"{}")
    assert result.error.type == "TimeoutError"


def test_http_error_carries_its_status_and_other_errors_do_not(capfd: Any) -> None:
    def handler(event: Any, ctx: Any) -> Any:
        if event["status"]:
            raise HTTPError(event["status"], "nope")
        raise LookupError("boom")

    result = serve(HandlerEntry(handler), b'{"status": 418}')
    assert (result.error.type, result.error.message, result.error.status) == (
        "HTTPError",
        "nope",
        418,
    )
    captured = capfd.readouterr()
    assert (captured.out, captured.err) == ("", "")  # an expected answer, not a crash
    result = serve(HandlerEntry(handler), b'{"status": 0}')
    assert (result.error.type, result.error.status) == ("LookupError", None)
    # The traceback is one record tagged with the request id (huselet.worker.output).
    out = capfd.readouterr().out.rstrip("\n").split("\n")
    assert len(out) == 1 and out[0].startswith("\x1eH1trid-1\x1f")
    text = json.loads(out[0].split("\x1f", 1)[1])
    assert text.startswith("Traceback (most recent call last):")
    assert text.endswith("LookupError: boom")
    with pytest.raises(ValueError):
        HTTPError(200, "a success is not an error")


def test_http_events_text_base64_query_and_cookies() -> None:
    http = HttpRequest(
        "POST",
        "/x",
        "a=1&a=2&e=",
        (("content-type", "text/plain"), ("cookie", "k=v; j=w")),
        "1.2.3.4",
    )
    event = build_event(http, "héllo".encode(), "rid", "fn")
    assert (event["body"], event["isBase64Encoded"]) == ("héllo", False)
    assert event["queryStringParameters"] == {"a": "1,2", "e": ""}
    assert event["cookies"] == ["k=v", "j=w"]
    binary = build_event(HttpRequest("POST", "/", "", (), ""), b"\xff\x00", "rid", "fn")
    assert binary["isBase64Encoded"] and base64.b64decode(binary["body"]) == b"\xff\x00"
    bad_text = build_event(
        HttpRequest("POST", "/", "", (("content-type", "text/plain"),), ""), b"\xff", "rid", "fn"
    )
    assert bad_text["isBase64Encoded"]  # "text" that is not UTF-8 still arrives intact
    assert "body" not in build_event(HttpRequest("GET", "/", "", (), ""), b"", "rid", "fn")
    assert "queryStringParameters" not in build_event(
        HttpRequest("GET", "/", "", (), ""), b"", "r", "f"
    )


def test_http_replies_follow_lambdas_rules() -> None:
    assert to_reply({"a": 1}) == (200, [("content-type", "application/json")], b'{"a":1}')
    assert to_reply("hi") == (200, [("content-type", "application/json")], b"hi")
    status, headers, body = to_reply(
        {
            "statusCode": "201",
            "headers": {"x": 1, "y": ["a", "b"]},
            "cookies": ["c=1"],
            "body": base64.b64encode(b"\x00").decode(),
            "isBase64Encoded": True,
        }
    )
    assert (status, body) == (201, b"\x00")
    assert headers == [
        ("x", "1"),
        ("y", "a"),
        ("y", "b"),
        ("set-cookie", "c=1"),
        ("content-type", "application/json"),
    ]
    for bad in (
        {"statusCode": 99},
        {"statusCode": 200, "headers": {"x": {"nested": 1}}},
        {"statusCode": 200, "body": 5},
        {"statusCode": 200, "body": "***", "isBase64Encoded": True},
        {"statusCode": 200, "cookies": "a=1"},
    ):
        with pytest.raises(InvalidResponse):
            to_reply(bad)
    result = serve(
        HandlerEntry(lambda e, c: {"statusCode": 700}, EntryKind.HTTP), b"", kind=KIND_BYTES
    )
    assert result.error.type == "InvalidResult"


def test_wsgi_entry_status_headers_body_and_close() -> None:
    closed: list[bool] = []

    class Body(list):  # type: ignore[type-arg]
        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        assert environ["SCRIPT_NAME"] == "/v1/invoke/f"
        assert environ["PATH_INFO"] == "/a b"
        assert environ["HTTP_X_ONE"] == "1,2"
        assert environ["wsgi.input"].read() == b"in"
        start_response("207 Multi", [("X-Out", "o")])
        return Body([b"o", b"ut"])

    http = HttpRequest("POST", "/a%20b", "", (("x-one", "1"), ("x-one", "2")), "")
    result = serve(WsgiEntry(app), b"in", kind=KIND_BYTES, http=http)
    assert (result.http.status, result.http.headers, result.body) == (
        207,
        (("X-Out", "o"),),
        b"out",
    )
    assert closed == [True]
    silent = serve(WsgiEntry(lambda env, sr: [b"x"]), b"", kind=KIND_BYTES)
    assert silent.error.type == "InvalidResult"
