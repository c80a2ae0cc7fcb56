"""HTTP ingress: invoke round trips, request ids, routing, invoker errors, HTTP functions.

What the invoker is asked and how its answers and errors become replies.
"""

from __future__ import annotations

import logging

import pytest
import trio
from httpkit import SECRET_PATH, assert_common_headers, error_of, one_request, start

# --- invoke round-trips -------------------------------------------------------------------


async def test_json_event_round_trip(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery)
    resp = await one_request(
        address,
        "POST",
        "/v1/invoke/echo",
        "Content-Type: application/json; charset=utf-8",
        body=b'{"name": "huse"}',
    )
    assert resp.status == 200
    assert resp.body == b'{"name": "huse"}'
    assert resp.headers["content-type"] == "application/json"
    assert_common_headers(resp)
    assert [(c.function, c.event, c.kind) for c in invoker.calls] == [
        ("echo", b'{"name": "huse"}', "json")
    ]


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("Content-Type: application/cloudevents+json", "json"),
        ("Content-Type: APPLICATION/JSON", "json"),
        ("Content-Type: text/plain", "bytes"),
        ("Content-Type: application/jsonx", "bytes"),
        ("Content-Type: +json", "bytes"),
        ("Content-Type: application/+json", "bytes"),
        ("X-Nothing: 1", "bytes"),
    ],
)
async def test_event_kind_follows_content_type(
    nursery: trio.Nursery, content_type: str, kind: str
) -> None:
    address, invoker, _ = await start(nursery)
    resp = await one_request(address, "POST", "/v1/invoke/echo", content_type, body=b"\x00\xff")
    assert resp.status == 200
    assert resp.body == b"\x00\xff"
    assert invoker.calls[0].kind == kind


async def test_empty_body_is_an_empty_event(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery)
    resp = await one_request(address, "POST", "/v1/invoke/echo")
    assert resp.status == 200
    assert resp.body == b""
    assert invoker.calls[0].event == b""


async def test_chunked_body_within_the_limit_is_assembled(nursery: trio.Nursery) -> None:
    address, _, _ = await start(nursery)
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    resp = await one_request(
        address, "POST", "/v1/invoke/echo", "Transfer-Encoding: chunked", body=body
    )
    assert resp.status == 200
    assert resp.body == b"hello world"


async def test_unsafe_result_content_type_is_replaced(nursery: trio.Nursery) -> None:
    address, _, _ = await start(nursery)
    resp = await one_request(address, "POST", "/v1/invoke/badtype")
    assert resp.status == 200
    assert resp.headers["content-type"] == "application/octet-stream"
    assert "x-injected" not in resp.headers


# --- request ids --------------------------------------------------------------------------


async def test_client_request_id_is_echoed_and_passed_on(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery)
    resp = await one_request(
        address, "POST", "/v1/invoke/echo", "X-Huselet-Request-Id: abc.DEF_1-2"
    )
    assert resp.request_id == "abc.DEF_1-2"
    assert invoker.calls[0].request_id == "abc.DEF_1-2"


@pytest.mark.parametrize(
    "header", [None, "X-Huselet-Request-Id: has space", "X-Huselet-Request-Id: " + "a" * 65]
)
async def test_request_id_is_generated_otherwise(nursery: trio.Nursery, header: str | None) -> None:
    address, invoker, _ = await start(nursery)
    headers = [header] if header else []
    first = await one_request(address, "POST", "/v1/invoke/echo", *headers)
    second = await one_request(address, "POST", "/v1/invoke/echo", *headers)
    for resp in (first, second):
        assert len(resp.request_id) == 16
        int(resp.request_id, 16)
    assert first.request_id != second.request_id
    assert [c.request_id for c in invoker.calls] == [first.request_id, second.request_id]


async def test_error_replies_carry_a_request_id(nursery: trio.Nursery) -> None:
    address, _, _ = await start(nursery)
    resp = await one_request(address, "GET", "/nowhere", "X-Huselet-Request-Id: trace-7")
    assert resp.status == 404
    assert resp.request_id == "trace-7"
    assert_common_headers(resp)


# --- routing ------------------------------------------------------------------------------


async def test_unknown_path_is_404(nursery: trio.Nursery) -> None:
    address, _, _ = await start(nursery)
    for path in ("/", "/v1/invoke", "/healthz/", "/v1/invokeecho"):
        resp = await one_request(address, "GET", path)
        assert resp.status == 404, path
        assert error_of(resp)["code"] == "not_found"
    # Under the invoke prefix, whatever is not a valid name is an unknown function.
    resp = await one_request(address, "POST", "/v1/invoke/")
    assert resp.status == 404
    assert error_of(resp)["code"] == "unknown_function"
    # A path under a function that does not take HTTP events is no route at all.
    resp = await one_request(address, "POST", "/v1/invoke/echo/extra")
    assert resp.status == 404
    assert error_of(resp)["code"] == "not_found"
    assert "events" in error_of(resp)["message"]


@pytest.mark.parametrize("name", ["Echo", "-echo", "a" * 64, "ec%68o", "ec.ho"])
async def test_invalid_function_name_is_404(nursery: trio.Nursery, name: str) -> None:
    address, invoker, _ = await start(nursery)
    resp = await one_request(address, "POST", f"/v1/invoke/{name}")
    assert resp.status == 404
    assert error_of(resp)["code"] == "unknown_function"
    assert invoker.calls == []


async def test_unknown_function_from_the_scheduler_is_404(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery)
    resp = await one_request(address, "POST", "/v1/invoke/nosuch?x=1")
    assert resp.status == 404
    assert error_of(resp)["code"] == "unknown_function"
    assert invoker.calls[0].function == "nosuch"


async def test_wrong_method_is_405_with_allow(nursery: trio.Nursery) -> None:
    address, _, _ = await start(nursery)
    resp = await one_request(address, "GET", "/v1/invoke/echo")
    assert resp.status == 405
    assert resp.headers["allow"] == "POST"
    assert error_of(resp)["code"] == "method_not_allowed"
    resp = await one_request(address, "POST", "/healthz")
    assert resp.status == 405
    assert resp.headers["allow"] == "GET, HEAD"


# --- scheduler errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "status", "code", "retry_after"),
    [
        ("full", 429, "queue_full", "2"),
        ("lost", 502, "instance_lost", None),
        ("unavailable", 503, "unavailable", "5"),
        ("slow", 504, "deadline_exceeded", None),
    ],
)
async def test_scheduler_errors_map_to_status(
    nursery: trio.Nursery, function: str, status: int, code: str, retry_after: str | None
) -> None:
    address, _, _ = await start(nursery)
    resp = await one_request(address, "POST", f"/v1/invoke/{function}")
    assert resp.status == status
    error = error_of(resp)
    assert error["code"] == code
    assert error["message"]
    assert "type" not in error
    assert resp.headers.get("retry-after") == retry_after
    assert_common_headers(resp)


async def test_handler_error_is_502_with_type(nursery: trio.Nursery) -> None:
    address, _, _ = await start(nursery)
    resp = await one_request(address, "POST", "/v1/invoke/boom")
    assert resp.status == 502
    assert error_of(resp) == {"code": "handler_error", "message": "bad input", "type": "ValueError"}


@pytest.mark.parametrize("function", ["crash", "internal"])
async def test_unexpected_exception_is_500_without_details(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, function: str
) -> None:
    address, _, _ = await start(nursery)
    with caplog.at_level(logging.ERROR, logger="huselet.gateway"):
        resp = await one_request(address, "POST", f"/v1/invoke/{function}")
    assert resp.status == 500
    assert error_of(resp) == {"code": "internal", "message": "internal error"}
    assert b"secret" not in resp.body and b"Traceback" not in resp.body
    logged = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert logged and SECRET_PATH in str(logged[0])
    # The daemon keeps serving.
    assert (await one_request(address, "GET", "/healthz")).status == 200


# --- HTTP functions -------------------------------------------------------------------------


async def test_http_functions_take_any_method_and_sub_path(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery, auth_token="s3cret")
    resp = await one_request(
        address,
        "DELETE",
        "/v1/invoke/web/a/b%20c?x=1&y",
        "Authorization: Bearer s3cret",
        "X-Huselet-Timeout-Ms: 5000",
        "Connection: keep-alive, x-hop",
        "X-Hop: 1",
        "Keep-Alive: timeout=5",
        "X-Kept: yes",
        body=b"payload",
    )
    assert resp.status == 201
    assert resp.body == b"payload"
    assert resp.headers["x-seen"] == "1"
    assert resp.headers["server"] == "huselet"  # the function's "evil" Server is dropped
    (http,) = invoker.http
    assert http is not None
    assert (http.method, http.path, http.query) == ("DELETE", "/a/b%20c", "x=1&y")
    assert http.source_ip == "127.0.0.1"
    names = [name for name, _ in http.headers]
    assert "x-kept" in names and "host" in names
    # The node's credential, its own headers and hop-by-hop ones stay out.
    for dropped in ("authorization", "x-huselet-timeout-ms", "connection", "x-hop", "keep-alive"):
        assert dropped not in names, dropped
    assert invoker.calls[0].kind == "bytes"
    # The bearer check still applies to HTTP functions.
    resp = await one_request(address, "GET", "/v1/invoke/web/")
    assert resp.status == 401


async def test_http_function_root_path_is_slash(nursery: trio.Nursery) -> None:
    address, invoker, _ = await start(nursery)
    for target in ("/v1/invoke/web", "/v1/invoke/web/", "/v1/invoke/web?q=1"):
        await one_request(address, "GET", target)
    assert [h.path for h in invoker.http if h] == ["/", "/", "/"]
    assert [h.query for h in invoker.http if h] == ["", "", "q=1"]
