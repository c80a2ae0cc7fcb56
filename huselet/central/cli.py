"""``python -m huselet.central`` (or ``huselet central``): run one central scheduler process.

Run two with the same ``--state-dir`` for an active/standby pair::

    python -m huselet.central --id sched-a --listen 127.0.0.1:7000 \\
        --admin 127.0.0.1:7100 --state-dir /var/lib/huselet-central
    python -m huselet.central --id sched-b --listen 127.0.0.1:7001 \\
        --admin 127.0.0.1:7101 --state-dir /var/lib/huselet-central

Logs are JSON lines on stderr (``central standby``, ``central leader`` with
the epoch, ``node connected`` …). Exit codes: 0 on SIGTERM/SIGINT, 2 on bad
arguments.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from pathlib import Path

import trio

from huselet.central.admin import AdminHttp
from huselet.central.api import FleetApi
from huselet.central.server import CentralScheduler, CentralSettings
from huselet.log import get_logger, setup_logging

log = get_logger("central")


def _address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f'expected "host:port", got {value!r}')
    return host.strip("[]") or "127.0.0.1", int(port)


def _positive_ms(value: str) -> float:
    try:
        ms = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds, got {value!r}") from None
    if ms <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return ms / 1000


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="huselet central", description="reference central scheduler for huselet nodes"
    )
    p.add_argument("--id", default=socket.gethostname(), help="scheduler id (default hostname)")
    p.add_argument("--listen", type=_address, required=True, help="host:port for nodes")
    p.add_argument("--admin", type=_address, help="host:port of the HTTP admin (default: none)")
    p.add_argument("--state-dir", type=Path, required=True, help="shared with the standby")
    p.add_argument("--heartbeat-ms", type=_positive_ms, default=1.0, help="default 1000")
    p.add_argument("--lease-ms", type=_positive_ms, default=10.0, help="default 10000")
    p.add_argument(
        "--standby-poll-ms", type=_positive_ms, default=0.2, help="lock poll, default 200"
    )
    p.add_argument(
        "--reconcile-ms", type=_positive_ms, default=1.0, help="full reconcile, default 1000"
    )
    p.add_argument("--no-fsync", action="store_true", help="do not fsync the journal")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.heartbeat_ms < args.lease_ms:
        print("huselet central: --heartbeat-ms must be below --lease-ms", file=sys.stderr)
        return 2
    setup_logging(args.log_level)
    settings = CentralSettings(
        scheduler_id=args.id[:128],
        listen_host=args.listen[0],
        listen_port=args.listen[1],
        state_dir=args.state_dir.resolve(),
        heartbeat_s=args.heartbeat_ms,
        lease_s=args.lease_ms,
        standby_poll_s=args.standby_poll_ms,
        reconcile_s=args.reconcile_ms,
        fsync=not args.no_fsync,
    )

    async def run() -> None:
        central = CentralScheduler(settings)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                if args.admin is not None:
                    admin = AdminHttp(FleetApi(central), *args.admin)
                    await nursery.start(admin.run)
                    log.info("central admin listening", admin=f"{admin.host}:{admin.port}")
                await nursery.start(central.run)
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()
        log.info("central stopped", scheduler=settings.scheduler_id)

    status = 0
    try:
        trio.run(run)
    except* OSError as group:  # e.g. the listen address is taken
        for exc in group.exceptions:
            print(f"huselet central: {exc}", file=sys.stderr)
        status = 1
    return status
