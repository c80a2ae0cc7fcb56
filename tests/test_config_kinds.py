"""functions[].events, .app and .kind: the function kinds in the config."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_config import base, refuse

from huselet.config import parse_config
from protocol.link import EntryKind


def app_config(tmp_path: Path, **fn: object) -> dict:
    raw = base(tmp_path)
    function = raw["functions"][0]
    del function["handler"]
    function.update(fn)
    return raw


def test_default_kind_is_the_plain_handler(tmp_path: Path) -> None:
    fn = parse_config(base(tmp_path), base_dir=tmp_path).functions[0]
    assert fn.kind is EntryKind.HANDLER and not fn.kind.takes_http


def test_events_http_and_apps(tmp_path: Path) -> None:
    fn = parse_config(base(tmp_path, events="http"), base_dir=tmp_path).functions[0]
    assert fn.kind is EntryKind.HTTP and fn.kind.takes_http
    for kind in ("wsgi", "asgi"):
        raw = app_config(tmp_path, app="main:handler", kind=kind)
        fn = parse_config(raw, base_dir=tmp_path).functions[0]
        assert (fn.kind, fn.handler) == (EntryKind(kind), "main:handler")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"events": "sqs"}, "functions[0].events: expected one of default, http"),
        ({"kind": "wsgi"}, 'functions[0].kind: kind = "wsgi" needs app = "module:attribute"'),
        ({"kind": "cgi"}, "functions[0].kind: expected one of handler, wsgi, asgi"),
        ({"app": "main:handler", "kind": "wsgi"}, "functions[0].handler: conflicts with app"),
    ],
)
def test_handler_kinds_are_validated(tmp_path: Path, fields: dict, expected: str) -> None:
    assert refuse(base(tmp_path, **fields), tmp_path).startswith(expected)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"app": "main:handler"}, 'functions[0].kind: required with app: "wsgi" or "asgi"'),
        ({"app": "main:handler", "kind": "handler"}, "functions[0].kind: expected one of wsgi"),
        ({"app": "main", "kind": "wsgi"}, "functions[0].app: "),
        ({"app": "nosuch:app", "kind": "asgi"}, "functions[0].app: module 'nosuch' not found"),
        ({"app": "main:handler", "kind": "wsgi", "events": "http"}, "functions[0].events: only"),
    ],
)
def test_app_kinds_are_validated(tmp_path: Path, fields: dict, expected: str) -> None:
    assert refuse(app_config(tmp_path, **fields), tmp_path).startswith(expected)
