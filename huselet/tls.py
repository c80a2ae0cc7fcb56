"""TLS contexts for the node ⇄ scheduler link (mutual certificates) and for etcd clients.

The fleet has one small CA. The scheduler presents a certificate signed by it
and requires one from every node (``CERT_REQUIRED``); a node presents its own
and verifies the scheduler's against the same CA (host name checked against
the address it dials, unless ``tls_server_name`` says otherwise). A peer
without a certificate from the fleet CA cannot complete the handshake, so it
never reaches the delta protocol. README "Fleet" shows the ``openssl``
commands that make the CA and the certificates.

It lives outside :mod:`huselet.central` because both sides use it: importing
anything under ``huselet.central`` runs that package's ``__init__`` (the whole
scheduler, its etcd client, httpx), which a node must not pay for.

TLS 1.2 is the minimum; the link is long-lived, so the handshake cost
(measured in ``bench/bench_fleet.py --tls``) is paid once per connection.
"""

from __future__ import annotations

import ssl
from pathlib import Path


class TlsConfigError(ValueError):
    """A certificate, key or CA file is missing or unusable."""


def _load(ctx: ssl.SSLContext, ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    try:
        ctx.load_verify_locations(cafile=str(ca))
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"cannot load TLS files ({ca}, {cert}, {key}): {exc}") from None
    return ctx


def server_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """The scheduler's side: present ``cert``; require a node certificate signed by ``ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    return _load(ctx, ca, cert, key)


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """The dialling side (a node, or the scheduler towards etcd): verify the server by ``ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    if cert is None or key is None:
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(f"cannot load the CA {ca}: {exc}") from None
        return ctx
    return _load(ctx, ca, cert, key)
