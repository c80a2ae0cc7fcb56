"""The ``huselet`` command line: ``run``, ``ctl``, ``invoke``, ``keygen``, ``pack``, ``version``.

``huselet run`` starts the daemon (foreground; systemd runs it the same way).
``huselet ctl`` talks to a running daemon over its admin socket.
``huselet invoke`` is a convenience HTTP client for the ingress (signs with a key if given).
``huselet keygen`` makes an access key pair for a tenant.
``huselet pack DIR -o FILE`` builds a package image (deterministic).
Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error; output
cut short by a closed pipe (``| head``) ends quietly with 141, as SIGPIPE would.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from huselet.config import Config

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a C tool killed by it reports


def _ctl_epilog() -> str:
    from huselet.admin.commands import ctl_commands

    lines = ["commands:"]
    for group, commands in ctl_commands().items():
        lines.append(f"  {group.value}:")
        lines.extend(f"    {c.name:<11} {c.help}" for c in commands)
    return "\n".join(lines)


def _load_config(path: str | None) -> Config:
    from huselet.config import load_config
    from huselet.runtime import available_runtimes

    return load_config(Path(path) if path else None, known_runtimes=available_runtimes().keys())


def cmd_run(args: argparse.Namespace) -> int:
    from huselet.errors import ConfigError, HuseletError
    from huselet.runtime.base import RuntimeError_
    from huselet.runtime.validate import check_runtimes

    try:
        config = _load_config(args.config)
        # The runtime tables too: --check must refuse whatever run would.
        check_runtimes(config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.check:
        print(f"config ok: {len(config.functions)} functions")
        return EXIT_OK
    import trio

    from huselet.daemon import Daemon
    from huselet.log import setup_logging

    setup_logging(args.log_level or config.node.log_level)

    async def main() -> None:
        await Daemon(config).run()

    status = EXIT_OK
    try:
        trio.run(main)
    except* HuseletError as group:
        for err in _leaves(group):
            print(f"huselet: cannot start: {err}", file=sys.stderr)
        status = EXIT_FAILURE
    except* OSError as group:
        for err in _leaves(group):
            print(f"huselet: cannot start: {_describe_os_error(err)}", file=sys.stderr)
        status = EXIT_FAILURE
    except* RuntimeError_ as group:
        # What only the host can refuse (isolation it lacks, a missing binary).
        for err in _leaves(group):
            print(f"huselet: cannot start: {err}", file=sys.stderr)
        status = EXIT_FAILURE
    except* KeyboardInterrupt:
        pass
    return status


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)


def _admin_socket(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    if os.environ.get("HUSELET_ADMIN_SOCKET"):
        return Path(os.environ["HUSELET_ADMIN_SOCKET"])
    return _load_config(args.config).admin.socket


def cmd_ctl(args: argparse.Namespace) -> int:
    from huselet.admin.client import AdminClient
    from huselet.admin.commands import BY_NAME, UsageError, call_for
    from huselet.admin.errors import AdminError
    from huselet.errors import ConfigError

    try:
        path = _admin_socket(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    command = BY_NAME[args.command]
    if command.runner is not None:
        return command.runner(args, path)
    try:
        name, call_args = call_for(command, args)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    try:
        data = AdminClient(path, timeout_s=args.timeout).call(name, **call_args)
    except AdminError as exc:
        print(f"huselet ctl: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    failed = command.failed_status_fails and data.get("status") == "failed"
    status = EXIT_FAILURE if failed else EXIT_OK
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return status
    assert command.render is not None, f"ctl command {command.name} has no renderer"
    print(command.render(data, args))
    return status


def ctl_observe_command(args: argparse.Namespace, path: Path) -> int:
    """``logs``, ``top``, ``metrics``: more than one call on one connection."""
    from huselet import ctl_observe
    from huselet.admin.client import AdminClient
    from huselet.admin.errors import AdminError

    if args.command != "logs" and args.what is not None:
        print(f"huselet ctl {args.command}: unexpected argument {args.what!r}", file=sys.stderr)
        return EXIT_USAGE
    since_s = None
    if args.since is not None:
        try:
            since_s = ctl_observe.parse_duration(args.since)
        except ValueError as exc:
            print(f"huselet ctl logs: --since: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.interval <= 0:
        print("huselet ctl top: --interval must be positive", file=sys.stderr)
        return EXIT_USAGE
    try:
        with AdminClient(path, timeout_s=args.timeout) as client:
            if args.command == "metrics":
                return ctl_observe.metrics(client, None)
            if args.command == "top":
                return ctl_observe.top(
                    client, interval_s=args.interval, as_json=args.json, once=args.once
                )
            if not args.what:
                print("huselet ctl logs: give the function: logs FUNCTION", file=sys.stderr)
                return EXIT_USAGE
            return ctl_observe.logs(
                client,
                args.what,
                request_id=args.request,
                since_s=since_s,
                follow=args.follow,
                as_json=args.json,
                limit=args.limit,
            )
    except AdminError as exc:
        print(f"huselet ctl: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_invoke(args: argparse.Namespace) -> int:
    """POST an event to the ingress; the reply body goes out unchanged (bytes stay bytes)."""
    from urllib.parse import urlsplit

    from huselet.errors import ConfigError

    config = None
    try:
        if args.config or not args.url:
            config = _load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.url:
        url = args.url if "://" in args.url else f"http://{args.url}"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            print(
                f"huselet invoke: --url must be http(s)://HOST:PORT, got {args.url!r}",
                file=sys.stderr,
            )
            return EXIT_USAGE
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            print(f"huselet invoke: --url has an invalid port: {args.url!r}", file=sys.stderr)
            return EXIT_USAGE
        scheme, host, base = parts.scheme, parts.hostname, parts.path.rstrip("/")
    else:
        assert config is not None
        scheme, host, port, base = "http", config.gateway.http.host, config.gateway.http.port, ""
    try:
        body, ctype = _invoke_body(args)
        token = _invoke_token(args, config)
    except (ValueError, OSError) as exc:
        print(f"huselet invoke: {exc}", file=sys.stderr)
        return EXIT_USAGE
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
        return EXIT_USAGE
    if key is not None:
        from huselet.client.signing import sign_request

        # Sent exactly like this (http.client adds no Host of its own then); it is signed.
        headers["Host"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        headers.update(sign_request(key, "POST", target, headers, body))
    conn_class = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    conn = conn_class(host, port, timeout=args.timeout)
    where = f"{scheme}://{host}:{port}"
    try:
        conn.request("POST", target, body=body, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
    except OSError as exc:
        print(f"huselet invoke: cannot reach {where}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
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
        return EXIT_OK
    out = sys.stdout.buffer if ok else sys.stderr.buffer
    sys.stdout.flush()
    out.write(payload)
    if out.isatty() and payload and not payload.endswith(b"\n"):
        out.write(b"\n")  # a prompt must not start mid-line; pipes get the bytes unchanged
    out.flush()
    return EXIT_OK if ok else EXIT_FAILURE


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


def cmd_keygen(args: argparse.Namespace) -> int:
    """A fresh key pair: the keys-file entry for the node, the key file for the caller."""
    from huselet.client.signing import generate_key

    key = generate_key()
    if args.output:
        path = Path(args.output)
        try:
            # O_EXCL: never overwrite a key; 0600 from creation, never readable by others.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            print(f"huselet keygen: cannot create {path}: {exc.strerror}", file=sys.stderr)
            return EXIT_FAILURE
        with os.fdopen(fd, "w") as f:
            json.dump({"key_id": key.key_id, "secret": key.secret}, f)
            f.write("\n")
        print(f"# caller key file written to {path} (use: huselet invoke --key-file {path})")
    tenant = args.tenant or "TENANT"
    print(f'# add to the keys file, under the [[tenants]] entry with name = "{tenant}":')
    print("[[tenants.keys]]")
    print(f'id = "{key.key_id}"')
    print(f'secret = "{key.secret}"')
    return EXIT_OK


def cmd_pack(args: argparse.Namespace) -> int:
    from cache.errors import CacheError
    from huselet.code.dependencies import DependencyOptions
    from huselet.code.packing import build_image
    from huselet.errors import ConfigError

    try:
        # The daemon's packer, with the node's wheel cache: one path, one digest.
        cache = _load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    deps = DependencyOptions(
        cache_dir=cache.node.state_dir / "cache",
        allow_sdist=cache.cache.allow_sdist or args.allow_sdist,
        timeout_s=cache.cache.pip_timeout_s,
    )

    def progress(report: dict[str, Any]) -> None:
        fields = " ".join(f"{k}={v}" for k, v in report.items() if k not in ("phase", "done"))
        print(f"huselet pack: {report['phase']}: {fields}", file=sys.stderr)

    try:
        info = build_image(Path(args.directory), Path(args.output), deps, progress)
        compressed = _write_zstd(info.path) if args.zstd else None
    except CacheError as exc:
        print(f"huselet pack: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"huselet pack: {_describe_os_error(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    report = {"digest": info.digest, "size": info.size, "files": info.files, "path": str(info.path)}
    if compressed is not None:
        report["zstd"] = str(compressed)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:<7} {value}")
    for skipped in info.skipped:
        print(f"huselet pack: left out special file {skipped}", file=sys.stderr)
    return EXIT_OK


def _write_zstd(image: Path) -> Path:
    """The transfer copy origins serve: ``<digest>.hlimg.zst`` next to the image."""
    import zstandard

    from cache.reader import inspect_image

    target = image.with_name(f"{inspect_image(image).digest}.hlimg.zst")
    tmp = target.with_name(target.name + ".tmp")
    with open(image, "rb") as src, open(tmp, "wb") as dst:
        zstandard.ZstdCompressor(level=10, threads=-1).copy_stream(src, dst)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, target)
    return target


def build_parser() -> argparse.ArgumentParser:
    import huselet

    parser = argparse.ArgumentParser(prog="huselet", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"huselet {huselet.__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", "-c", help="TOML file (default: the embedded example)")
    run.add_argument("--check", action="store_true", help="validate the config and exit")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.set_defaults(func=cmd_run)

    ctl = sub.add_parser(
        "ctl",
        help="inspect and operate a running daemon through its admin socket",
        description="Talk to a running huselet over its admin socket.",
        epilog=_ctl_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from huselet.admin.commands import COMMANDS

    ctl.add_argument(
        "command",
        metavar="COMMAND",
        choices=[c.name for c in COMMANDS if c.group is not None],
        help="one of the commands below",
    )
    ctl.add_argument("what", nargs="?", help="logs: the function; debug: block-loop")
    ctl.add_argument("--socket", "-s", help="admin socket path")
    ctl.add_argument("--config", "-c", help="read the admin socket path from this TOML")
    ctl.add_argument("--json", action="store_true", help="machine-readable output")
    ctl.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    for command in COMMANDS:
        if not command.options:
            continue
        target: Any = ctl
        if command.option_group is not None:
            target = ctl.add_argument_group(*command.option_group)
        for option in command.options:
            target.add_argument(*option.flags, **option.kwargs)
    ctl.set_defaults(func=cmd_ctl)

    pack = sub.add_parser("pack", help="pack a directory into a package image")
    pack.add_argument("directory")
    pack.add_argument(
        "--output", "-o", required=True, help="image file, or a directory for <digest>.hlimg"
    )
    pack.add_argument("--zstd", action="store_true", help="also write <digest>.hlimg.zst")
    pack.add_argument(
        "--config", help="node config whose state dir holds the wheel cache (default: built-in)"
    )
    pack.add_argument(
        "--allow-sdist", action="store_true", help="let pip build sdists from requirements.txt"
    )
    pack.add_argument("--json", action="store_true", help="machine-readable output")
    pack.set_defaults(func=cmd_pack)

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

    keygen = sub.add_parser("keygen", help="make an access key pair for a tenant")
    keygen.add_argument("--tenant", "-t", help="tenant name for the printed keys-file entry")
    keygen.add_argument("--output", "-o", help="also write the caller's key file (mode 0600)")
    keygen.set_defaults(func=cmd_keygen)

    central = sub.add_parser(
        "central",
        help="run the reference central scheduler (see `huselet central --help`)",
        add_help=False,
    )
    central.add_argument("central_args", nargs=argparse.REMAINDER)
    central.set_defaults(func=lambda args: _central(args.central_args))

    ver = sub.add_parser("version", help="print the version")
    ver.set_defaults(func=lambda args: print(__import__("huselet").__version__) or EXIT_OK)
    return parser


def _central(argv: list[str]) -> int:
    from huselet.central.cli import main as central_main

    return central_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["central"]:
        # Its options are its own parser's; argparse would claim them here.
        return _central(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader (head, less) is gone: stop quietly. Point stdout at /dev/null
        # so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    raise SystemExit(main())
