"""``python -m huselet.central`` (or ``huselet central``): run one central scheduler process.

HA across machines — every scheduler points at the same etcd cluster; one
leads, the others are standbys::

    huselet central --id sched-a --listen 0.0.0.0:7000 --advertise 10.0.0.1:7000 \\
        --etcd https://10.0.0.1:2379,https://10.0.0.2:2379,https://10.0.0.3:2379 \\
        --etcd-ca ca.pem --etcd-cert sched-a.pem --etcd-key sched-a-key.pem \\
        --tls-ca fleet-ca.pem --tls-cert sched-a.pem --tls-key sched-a-key.pem \\
        --admin 127.0.0.1:7100 --admin-token-file /etc/huselet/admin-token

Single-host dev mode — no ``--etcd``: with ``--state-dir`` the scheduler
supervises a private single-member etcd (when the ``etcd`` binary is
installed; ``--dev-store journal`` forces the local journal instead). Either
way a second scheduler on the same state directory is refused.

Logs are JSON lines on stderr (``central standby``, ``central leader`` with
the epoch, ``stepping down``, ``node connected`` …). Exit codes: 0 on
SIGTERM/SIGINT, 1 on a start-up failure (address taken, state in use, TLS
files), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import signal
import socket
import sys
from contextlib import ExitStack
from pathlib import Path

import trio

from huselet.central.admin import AdminHttp
from huselet.central.api import FleetApi
from huselet.central.backend import Backend, EtcdBackend, LocalBackend
from huselet.central.embedded import EtcdNotInstalled, PrivateEtcd, etcd_binary
from huselet.central.errors import StateInUse
from huselet.central.etcd import EtcdClient
from huselet.central.leader import LeaderLock
from huselet.central.server import CentralScheduler, CentralSettings
from huselet.log import get_logger, setup_logging
from huselet.tls import TlsConfigError, client_context, server_context

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
    p.add_argument("--advertise", type=_address, help="host:port nodes dial (default --listen)")
    p.add_argument("--admin", type=_address, help="host:port of the HTTP admin (default: none)")
    p.add_argument(
        "--admin-token-file",
        type=Path,
        help="bearer token of the admin API (created, mode 0600, if missing; "
        "default STATE_DIR/admin-token)",
    )
    p.add_argument("--etcd", help="etcd endpoints, comma-separated (HA mode)")
    p.add_argument("--etcd-prefix", default="/huselet/central", help="key prefix in etcd")
    p.add_argument("--etcd-ca", type=Path, help="CA of etcd's https endpoints")
    p.add_argument("--etcd-cert", type=Path, help="client certificate for etcd")
    p.add_argument("--etcd-key", type=Path, help="client key for etcd")
    p.add_argument(
        "--leader-ttl-s", type=int, default=3, help="leader lease TTL in seconds (≥ 2), default 3"
    )
    p.add_argument("--state-dir", type=Path, help="dev mode without --etcd: local state")
    p.add_argument(
        "--dev-store",
        choices=["auto", "etcd", "journal"],
        default="auto",
        help="dev mode: a private etcd (auto: when installed) or the local journal",
    )
    p.add_argument("--tls-ca", type=Path, help="fleet CA: node links use mutual TLS")
    p.add_argument("--tls-cert", type=Path, help="this scheduler's certificate")
    p.add_argument("--tls-key", type=Path, help="this scheduler's key")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow plaintext node links on a non-loopback address (not for production)",
    )
    p.add_argument("--heartbeat-ms", type=_positive_ms, default=1.0, help="default 1000")
    p.add_argument("--lease-ms", type=_positive_ms, default=10.0, help="default 10000")
    p.add_argument(
        "--reconcile-ms", type=_positive_ms, default=1.0, help="full reconcile, default 1000"
    )
    p.add_argument("--no-fsync", action="store_true", help="do not fsync the journal")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _admin_token(path: Path) -> str:
    """Read the token, or create one (0600) when the file does not exist."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = secrets.token_urlsafe(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        log.info("admin token created", path=str(path))
    return token


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if not args.heartbeat_ms < args.lease_ms:
        print("huselet central: --heartbeat-ms must be below --lease-ms", file=sys.stderr)
        return 2
    if args.etcd is None and args.state_dir is None:
        p.error("give --etcd (HA) or --state-dir (single-host dev mode)")
    if args.leader_ttl_s < 2:
        p.error("--leader-ttl-s must be at least 2")
    tls_files = (args.tls_ca, args.tls_cert, args.tls_key)
    if any(tls_files) and not all(tls_files):
        p.error("--tls-ca, --tls-cert and --tls-key go together")
    if not all(tls_files) and not _is_loopback(args.listen[0]) and not args.insecure:
        p.error(
            "node links on a non-loopback address need --tls-ca/--tls-cert/--tls-key "
            "(or --insecure)"
        )
    token_file = args.admin_token_file
    if args.admin is not None and token_file is None:
        if args.state_dir is None:
            p.error("--admin needs --admin-token-file (or --state-dir for the default)")
        token_file = args.state_dir / "admin-token"
    setup_logging(args.log_level, background=True)
    try:
        tls = server_context(*tls_files) if all(tls_files) else None
        etcd_tls = (
            client_context(args.etcd_ca, args.etcd_cert, args.etcd_key) if args.etcd_ca else None
        )
        token = _admin_token(token_file) if args.admin is not None else None
    except (TlsConfigError, OSError) as exc:
        print(f"huselet central: {exc}", file=sys.stderr)
        return 1
    admin_url = None
    if args.admin is not None:
        admin_url = f"http://{args.admin[0]}:{args.admin[1]}"
    settings = CentralSettings(
        scheduler_id=args.id[:128],
        listen_host=args.listen[0],
        listen_port=args.listen[1],
        state_dir=args.state_dir.resolve() if args.state_dir else None,
        advertise=args.advertise,
        admin_url=admin_url,
        tls=tls,
        heartbeat_s=args.heartbeat_ms,
        lease_s=args.lease_ms,
        reconcile_s=args.reconcile_ms,
        fsync=not args.no_fsync,
    )

    with ExitStack() as stack:
        endpoints: list[str] | None = None
        if args.etcd is not None:
            endpoints = [e.strip() for e in args.etcd.split(",") if e.strip()]
        elif args.dev_store != "journal" and (args.dev_store == "etcd" or etcd_binary()):
            assert settings.state_dir is not None
            # One scheduler per state directory: the lock refuses a second one.
            lock = LeaderLock(settings.state_dir)
            if not lock.try_acquire():
                print(
                    f"huselet central: another scheduler runs on {settings.state_dir}; "
                    "for a standby use --etcd",
                    file=sys.stderr,
                )
                return 1
            stack.callback(lock.release)
            try:
                private = PrivateEtcd(settings.state_dir / "etcd").start()
            except (EtcdNotInstalled, RuntimeError) as exc:
                print(f"huselet central: {exc}", file=sys.stderr)
                return 1
            stack.callback(private.stop)
            log.info("central dev mode: private etcd", endpoint=private.endpoint)
            endpoints = [private.endpoint]
        else:
            log.info("central dev mode: local journal", state_dir=str(settings.state_dir))

        async def run() -> None:
            backend: Backend
            if endpoints is not None:
                client = EtcdClient(endpoints, tls=etcd_tls)
                backend = EtcdBackend(client, args.etcd_prefix, args.leader_ttl_s)
            else:
                assert settings.state_dir is not None
                backend = LocalBackend(settings.state_dir, fsync=settings.fsync)
            central = CentralScheduler(settings, backend)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with trio.open_nursery() as nursery:
                    if args.admin is not None:
                        assert token is not None
                        admin = AdminHttp(FleetApi(central), *args.admin, token=token)
                        await nursery.start(admin.run)
                        log.info("central admin listening", admin=f"{admin.host}:{admin.port}")
                    await nursery.start(central.run)
                    async for _ in signals:
                        break
                    await central.shutdown()  # bye shutdown to the nodes, then the lease goes
                    nursery.cancel_scope.cancel()
            log.info("central stopped", scheduler=settings.scheduler_id)

        status = 0
        try:
            trio.run(run)
        except* (OSError, StateInUse) as group:  # e.g. the listen address is taken
            for error in group.exceptions:
                print(f"huselet central: {error}", file=sys.stderr)
            status = 1
        return status
    return 1  # unreachable (ExitStack does not swallow)
