"""protocol.link: the optional http keys of REQUEST/RESULT and error.status."""

from __future__ import annotations

import pytest

from protocol.errors import MalformedFrame
from protocol.frames import FrameDecoder, encode_frame
from protocol.link import (
    KIND_BYTES,
    ErrorInfo,
    HttpRequest,
    HttpResponse,
    Request,
    Result,
)


def wire(msg: dict) -> dict:  # type: ignore[type-arg]
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(msg))
    out = decoder.next_frame()
    assert out is not None
    return out


def test_http_request_and_response_round_trip_through_frames() -> None:
    http = HttpRequest("PUT", "/a/b", "x=1", (("host", "h"), ("x-a", "1")), "10.0.0.1")
    req = Request("r1", b"\x00body", KIND_BYTES, 500, http)
    assert Request.decode(wire(req.encode())) == req
    res = Result("r1", ok=True, body=b"ok", kind=KIND_BYTES, http=HttpResponse(201, (("a", "b"),)))
    assert Result.decode(wire(res.encode())) == res
    err = Result("r1", ok=False, error=ErrorInfo("HTTPError", "gone", 410))
    assert Result.decode(wire(err.encode())) == err


def test_frames_without_http_keys_decode_as_before() -> None:
    # What an older peer sends: no http, no status.
    req = Request.decode(
        {"t": "request", "id": "r", "event": b"{}", "kind": "json", "timeout_ms": 5}
    )
    assert req.http is None
    res = Result.decode(
        {"t": "result", "id": "r", "ok": False, "error": {"type": "T", "message": "m"}}
    )
    assert res.error == ErrorInfo("T", "m", None)
    # And what we send an older peer carries nothing it would reject.
    plain = Request("r", b"{}", "json", 5).encode()
    assert "http" not in plain


@pytest.mark.parametrize(
    "http",
    [
        "GET /",
        {"method": "GET", "path": "/", "query": "", "source_ip": "", "headers": "x"},
        {"method": "GET", "path": "/", "query": "", "source_ip": "", "headers": [["a"]]},
        {"method": "GET", "path": "/", "query": "", "source_ip": "", "headers": [["a", 1]]},
        {
            "method": "GET",
            "path": "/",
            "query": "",
            "source_ip": "",
            "headers": [["a", "b"]] * 1025,
        },
        {"method": 1, "path": "/", "query": "", "source_ip": ""},
    ],
)
def test_malformed_http_request_maps_are_refused(http: object) -> None:
    with pytest.raises(MalformedFrame):
        Request.decode(
            {
                "t": "request",
                "id": "r",
                "event": b"",
                "kind": "bytes",
                "timeout_ms": 5,
                "http": http,
            }
        )


@pytest.mark.parametrize("status", [99, 199, 600, True, "200"])
def test_result_status_outside_200_599_is_refused(status: object) -> None:
    msg = Result("r", ok=True, http=HttpResponse(200)).encode()
    msg["http"]["status"] = status
    with pytest.raises(MalformedFrame):
        Result.decode(msg)


@pytest.mark.parametrize("status", [200, 399, 600, False, "404"])
def test_error_status_must_be_4xx_or_5xx(status: object) -> None:
    with pytest.raises(MalformedFrame):
        ErrorInfo.decode({"type": "T", "message": "m", "status": status})
