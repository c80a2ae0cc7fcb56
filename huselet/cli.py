"""The ``huselet`` command line: ``run``, ``ctl``, ``invoke``, ``pack``, ``version``.

``huselet run`` starts the daemon (foreground; systemd runs it the same way).
``huselet ctl`` talks to a running daemon over its admin socket.
``huselet invoke`` is a convenience HTTP client for the ingress.
``huselet pack DIR -o FILE`` builds a package image (deterministic).
Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _load_config(path: str | None) -> Any:
    from huselet.config import load_config
    from huselet.runtime import available_runtimes

    return load_config(Path(path) if path else None, known_runtimes=available_runtimes().keys())


def cmd_run(args: argparse.Namespace) -> int:
    from huselet.errors import ConfigError, HuseletError

    try:
        config = _load_config(args.config)
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
    from huselet.admin import render
    from huselet.admin.client import AdminClient
    from huselet.admin.errors import AdminError
    from huselet.errors import ConfigError

    try:
        path = _admin_socket(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    call_args: dict[str, Any] = {}
    command = args.command
    if command == "debug":
        if args.what != "block-loop" or args.ms is None:
            print("huselet ctl debug: use `debug block-loop --ms N`", file=sys.stderr)
            return EXIT_USAGE
        command, call_args = "debug_block_loop", {"ms": args.ms}
    elif args.what is not None:
        print(f"huselet ctl {command}: unexpected argument {args.what!r}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "prefetch":
        if bool(args.function) == bool(args.digest):
            print("huselet ctl prefetch: give --function NAME or --digest HEX", file=sys.stderr)
            return EXIT_USAGE
        call_args = {
            k: v
            for k, v in {
                "function": args.function,
                "digest": args.digest,
                "origin": args.origin,
                "wait": args.wait or None,
                # The daemon waits a little less than we do, so its answer arrives.
                "timeout_s": max(1.0, args.timeout - 2) if args.wait else None,
            }.items()
            if v is not None
        }
    try:
        data = AdminClient(path, timeout_s=args.timeout).call(command, **call_args)
    except AdminError as exc:
        print(f"huselet ctl: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return EXIT_OK
    renderers: dict[str, Callable[[Any], str]] = {
        "status": render.render_status,
        "functions": render.render_functions,
        "instances": render.render_instances,
        "health": render.render_health,
        "cache": render.render_cache,
        "prefetch": render.render_prefetch,
        "scrub": render.render_scrub,
        "scheduler": render.render_scheduler,
        "reload": render.render_reload,
        "debug": lambda data: json.dumps(data),
    }
    print(renderers[args.command](data))
    return EXIT_OK


def cmd_invoke(args: argparse.Namespace) -> int:
    if args.url:
        host, _, port = args.url.removeprefix("http://").rstrip("/").rpartition(":")
    else:
        from huselet.errors import ConfigError

        try:
            address = _load_config(args.config).gateway.http
        except ConfigError as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        host, port = address.host, str(address.port)
    host = host.strip("[]")
    if args.data is not None:
        try:
            json.loads(args.data)
        except ValueError as exc:
            print(f"huselet invoke: --data is not valid JSON: {exc}", file=sys.stderr)
            return EXIT_USAGE
        body, ctype = args.data.encode(), "application/json"
    else:
        body, ctype = b"{}", "application/json"
    headers = {"Content-Type": ctype}
    if args.timeout_ms:
        headers["X-Huselet-Timeout-Ms"] = str(args.timeout_ms)
    token = os.environ.get("HUSELET_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection(host, int(port), timeout=args.timeout)
    try:
        conn.request("POST", f"/v1/invoke/{args.function}", body=body, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
    except OSError as exc:
        print(f"huselet invoke: cannot reach http://{host}:{port}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        conn.close()
    out = sys.stdout if resp.status == 200 else sys.stderr
    if args.verbose or resp.status != 200:
        print(f"HTTP {resp.status} request-id {resp.getheader('X-Huselet-Request-Id')}", file=out)
    text = payload.decode("utf-8", "replace")
    print(text, file=out)
    return EXIT_OK if resp.status == 200 else EXIT_FAILURE


def cmd_pack(args: argparse.Namespace) -> int:
    from cache.errors import CacheError
    from huselet.dependencies import DependencyOptions
    from huselet.errors import ConfigError
    from huselet.packing import build_image

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

    from cache.reader import ImageReader

    with ImageReader.open(image, verify=False) as reader:
        target = image.with_name(f"{reader.digest}.hlimg.zst")
    tmp = target.with_name(target.name + ".tmp")
    with open(image, "rb") as src, open(tmp, "wb") as dst:
        zstandard.ZstdCompressor(level=10, threads=-1).copy_stream(src, dst)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, target)
    return target


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="huselet", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", "-c", help="TOML file (default: the embedded example)")
    run.add_argument("--check", action="store_true", help="validate the config and exit")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.set_defaults(func=cmd_run)

    ctl = sub.add_parser("ctl", help="inspect a running daemon through its admin socket")
    ctl.add_argument(
        "command",
        choices=[
            *("status", "functions", "instances", "health", "cache", "prefetch", "scrub"),
            *("scheduler", "reload", "debug"),
        ],
    )
    ctl.add_argument("what", nargs="?", help="for debug: block-loop")
    ctl.add_argument("--socket", "-s", help="admin socket path")
    ctl.add_argument("--config", "-c", help="read the admin socket path from this TOML")
    ctl.add_argument("--json", action="store_true", help="machine-readable output")
    ctl.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    hint = ctl.add_argument_group("prefetch", "what `huselet ctl prefetch` fetches")
    hint.add_argument("--function", "-f", help="prefetch this function's image")
    hint.add_argument("--digest", help="prefetch this image (sha256 hex)")
    hint.add_argument("--origin", help="where the digest is (default: as known or configured)")
    hint.add_argument("--wait", action="store_true", help="wait until it is installed")
    debug = ctl.add_argument_group("debug", "fault injection (needs admin.debug_commands)")
    debug.add_argument("--ms", type=int, help="block-loop: how long to block the event loop")
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
    inv.add_argument("--data", "-d", help="JSON event (default {})")
    inv.add_argument("--url", help="ingress address, e.g. http://127.0.0.1:8470")
    inv.add_argument("--config", "-c", help="read the ingress address from this TOML")
    inv.add_argument("--timeout-ms", type=int, help="shorten the function's deadline")
    inv.add_argument("--timeout", type=float, default=60.0, help="client timeout, seconds")
    inv.add_argument("--verbose", "-v", action="store_true", help="print status and request id")
    inv.set_defaults(func=cmd_invoke)

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
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
