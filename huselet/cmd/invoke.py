"""``huselet invoke``: a convenience HTTP client for the ingress.

POSTs an event to ``/v1/invoke/FUNCTION``, with a bearer token or a request
signature when given; the reply body goes to stdout unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from huselet.cmd.common import Exit, Subparsers, load_config


def add_parser(sub: Subparsers) -> None:
    """The ``invoke`` subcommand's arguments."""
    inv = sub.add_parser("invoke", help="invoke a function through the HTTP ingress")
    inv.add_argument("function")
    inv.add_argument("--data", "-d", help="JSON event, or @FILE / @- (default {})")
    inv.add_argument("--data-binary", metavar="DATA", help="raw bytes event: @FILE, @- or text")
    inv.add_argument("--content-type", help="default: application/json or application/octet-stream")
    inv.add_argument("--output", "-o", help="write the reply body to this file")
    inv.add_argument("--url", help="ingress URL, e.g. http://127.0.0.1:8470 or https://fn.example")
    inv.add_argument(
        "--config", "-c", help="read the ingress address and token file from this TOML"
    )
    inv.add_argument("--token-file", help="bearer token file (default: gateway.auth_token_file)")
    inv.add_argument("--request-id", help="send this X-Request-Id")
    inv.add_argument("--timeout-ms", type=int, help="shorten the function's deadline")
    inv.add_argument("--timeout", type=float, default=60.0, help="client timeout, seconds")
    inv.add_argument(
        "--verbose", "-v", action="store_true", help="print status, request id, timings (stderr)"
    )
    inv.add_argument(
        "--key-file",
        help="sign with this key file (JSON from `huselet keygen -o`); default: "
        "$HUSELET_KEY_FILE, or $HUSELET_ACCESS_KEY_ID + $HUSELET_SECRET_ACCESS_KEY",
    )
    inv.set_defaults(func=cmd_invoke)


def cmd_invoke(args: argparse.Namespace) -> int:
    """POST an event to the ingress; the reply body goes out unchanged (bytes stay bytes)."""
    from urllib.parse import urlsplit

    from huselet.errors import ConfigError

    config = None
    try:
        if args.config or not args.url:
            config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return Exit.USAGE
    if args.url:
        url = args.url if "://" in args.url else f"http://{args.url}"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            print(
                f"huselet invoke: --url must be http(s)://HOST:PORT, got {args.url!r}",
                file=sys.stderr,
            )
            return Exit.USAGE
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            print(f"huselet invoke: --url has an invalid port: {args.url!r}", file=sys.stderr)
            return Exit.USAGE
        scheme, host, base = parts.scheme, parts.hostname, parts.path.rstrip("/")
    else:
        assert config is not None
        scheme, host, port, base = "http", config.gateway.http.host, config.gateway.http.port, ""
    try:
        body, ctype = _invoke_body(args)
        token = _invoke_token(args, config)
    except (ValueError, OSError) as exc:
        print(f"huselet invoke: {exc}", file=sys.stderr)
        return Exit.USAGE
    headers = {"Content-Type": ctype}
    if args.timeout_ms:
        headers["X-Huselet-Timeout-Ms"] = str(args.timeout_ms)
    if args.request_id:
        headers["X-Request-Id"] = args.request_id
    if token:
        headers["Authorization"] = f"Bearer {token}"
    target = f"{base}/v1/invoke/{args.function}"
    try:
        key = _signing_key(args)
    except ValueError as exc:
        print(f"huselet invoke: {exc}", file=sys.stderr)
        return Exit.USAGE
    if key is not None:
        from huselet.client.signing import sign_request

        # Sent exactly like this (http.client adds no Host of its own then); it is signed.
        headers["Host"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        headers.update(sign_request(key, "POST", target, headers, body))
    # Here, not at the top: cli.py imports every subcommand module to build the
    # parser, and only this one uses http.client (~15 ms with email and ssl).
    import http.client

    conn_class = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    conn = conn_class(host, port, timeout=args.timeout)
    where = f"{scheme}://{host}:{port}"
    try:
        conn.request("POST", target, body=body, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
    except OSError as exc:
        print(f"huselet invoke: cannot reach {where}: {exc}", file=sys.stderr)
        return Exit.FAILURE
    finally:
        conn.close()
    ok = resp.status == 200
    if args.verbose or not ok:
        # Always on stderr: stdout carries the reply body and nothing else.
        print(
            f"HTTP {resp.status} request-id {resp.getheader('X-Huselet-Request-Id')} "
            f"cold-start {resp.getheader('X-Huselet-Cold-Start')} "
            f"timing {resp.getheader('Server-Timing')}",
            file=sys.stderr,
        )
    if args.output and ok:
        Path(args.output).write_bytes(payload)
        return Exit.OK
    out = sys.stdout.buffer if ok else sys.stderr.buffer
    sys.stdout.flush()
    out.write(payload)
    if out.isatty() and payload and not payload.endswith(b"\n"):
        out.write(b"\n")  # a prompt must not start mid-line; pipes get the bytes unchanged
    out.flush()
    return Exit.OK if ok else Exit.FAILURE


def _invoke_body(args: argparse.Namespace) -> tuple[bytes, str]:
    """The event and its content type from --data (JSON) or --data-binary (bytes)."""
    if args.data is not None and args.data_binary is not None:
        raise ValueError("give --data or --data-binary, not both")
    if args.data_binary is not None:
        return _read_arg_data(args.data_binary), args.content_type or "application/octet-stream"
    if args.data is None:
        return b"{}", "application/json"
    raw = _read_arg_data(args.data)
    try:
        json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"--data is not valid JSON: {exc}") from None
    return raw, args.content_type or "application/json"


def _read_arg_data(value: str) -> bytes:
    """``@FILE`` reads the file, ``@-`` reads stdin, anything else is the data itself."""
    if value == "@-":
        return sys.stdin.buffer.read()
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read {value[1:]}: {exc.strerror}") from None
    return value.encode("utf-8")


def _invoke_token(args: argparse.Namespace, config: Any) -> str | None:
    """--token-file, else the config's gateway.auth_token_file, else $HUSELET_TOKEN."""
    path = args.token_file or (config.gateway.auth_token_file if config is not None else None)
    if path is not None:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the token file {path}: {exc.strerror}") from None
        if not token:
            raise ValueError(f"the token file {path} is empty")
        return token
    return os.environ.get("HUSELET_TOKEN") or None


def _signing_key(args: argparse.Namespace) -> Any:
    """The access key to sign with: --key-file, else the environment, else None (unsigned)."""
    from huselet.client.signing import key_from_env, load_key_file

    if args.key_file:
        return load_key_file(Path(args.key_file))
    return key_from_env()
