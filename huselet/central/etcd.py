"""A small etcd v3 client over etcd's JSON gateway (``/v3/...``), for trio, via httpx.

Why not a gRPC client: the maintained Python etcd clients are asyncio-only or
pin old protobuf releases; the JSON gateway ships with every etcd ≥ 3.4 (Debian's
``etcd-server`` 3.4.23 included) and speaks plain HTTP/1.1 + JSON, which httpx
drives from trio (through anyio). Keys and values travel base64-encoded and
64-bit integers as JSON strings, as the gateway's protobuf-JSON mapping says.

What the central scheduler needs and nothing more: :meth:`EtcdClient.range`,
:meth:`~EtcdClient.put`, :meth:`~EtcdClient.delete`, :meth:`~EtcdClient.txn`,
leases (:meth:`~EtcdClient.lease_grant`, :meth:`~EtcdClient.lease_keepalive`,
:meth:`~EtcdClient.lease_revoke`), :meth:`~EtcdClient.compact` and
:meth:`~EtcdClient.watch`, which reconnects from the revision after the last
one it delivered, so a dropped stream loses no event.

Every call has a deadline (``timeout``); several endpoints are tried in turn
when one is unreachable. Errors are typed: :class:`EtcdUnavailable` (transport,
retry elsewhere/later), :class:`EtcdRequestError` (etcd answered with an
error), :class:`EtcdCompacted` (a revision older than the last compaction),
:class:`LeaseNotFound` (the lease expired or was revoked).
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any

import httpx
import trio

DEFAULT_TIMEOUT_S = 2.0
WATCH_IDLE_S = 15.0  # a silent watch stream is re-opened from the last revision
WATCH_RECONNECT_S = 10.0  # how long a broken watch keeps trying before it gives up
MAX_RESPONSE_BYTES = 16 << 20  # etcd's own request limit is 1.5 MiB; ranges can be larger
GRPC_OUT_OF_RANGE = 11  # "required revision has been compacted"
GRPC_NOT_FOUND = 5  # "requested lease not found"
GRPC_UNAVAILABLE = 14


class EtcdError(Exception):
    """Base of every error this client raises."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered in time (connect failure, timeout, 5xx from a proxy)."""


class EtcdRequestError(EtcdError):
    """etcd answered with an error (``code`` is the gRPC status code)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"etcd error {code}: {message}")
        self.code = code
        self.message = message


class EtcdCompacted(EtcdRequestError):
    """The requested revision was compacted away; re-read the current state."""

    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(GRPC_OUT_OF_RANGE, message)
        self.compact_revision = compact_revision


class LeaseNotFound(EtcdError):
    """The lease is gone: it expired (its holder was too slow) or was revoked."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


class _Named(Enum):
    """Members whose value is their own name: the gateway's JSON spells enums so."""

    @staticmethod
    def _generate_next_value_(name: str, start: int, count: int, last_values: list[Any]) -> str:
        return name


class EventType(_Named):
    PUT = auto()
    DELETE = auto()


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int  # the store's revision after the transaction
    responses: list[dict[str, Any]] = field(default_factory=list)  # raw, per op

    def ranges(self) -> list[list[KeyValue]]:
        """The key-values of every range op, in op order."""
        out = []
        for r in self.responses:
            if "response_range" in r:
                out.append([_kv(kv) for kv in r["response_range"].get("kvs", [])])
        return out


class Target(_Named):
    VERSION = auto()
    CREATE = auto()
    MOD = auto()
    VALUE = auto()


class CompareResult(_Named):
    EQUAL = auto()
    GREATER = auto()
    LESS = auto()
    NOT_EQUAL = auto()


_TARGET_FIELD = {
    Target.VERSION: "version",
    Target.CREATE: "create_revision",
    Target.MOD: "mod_revision",
    Target.VALUE: "value",
}


@dataclass(frozen=True, slots=True)
class Compare:
    key: bytes
    target: Target
    result: CompareResult
    operand: int | bytes

    def json(self) -> dict[str, Any]:
        name = _TARGET_FIELD[self.target]
        operand = self.operand
        value = _b64(operand) if isinstance(operand, bytes) else str(operand)
        return {
            "key": _b64(self.key),
            "target": self.target.value,
            "result": self.result.value,
            name: value,
        }


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of a transaction (build with :meth:`put`, :meth:`delete`, :meth:`get`)."""

    body: dict[str, Any]

    @staticmethod
    def put(key: bytes, value: bytes, lease: int = 0) -> Op:
        req: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            req["lease"] = str(lease)
        return Op({"request_put": req})

    @staticmethod
    def delete(key: bytes, *, prefix: bool = False) -> Op:
        req = {"key": _b64(key)}
        if prefix:
            req["range_end"] = _b64(prefix_end(key))
        return Op({"request_delete_range": req})

    @staticmethod
    def get(key: bytes) -> Op:
        return Op({"request_range": {"key": _b64(key)}})


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # the whole key space


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _int(value: Any) -> int:
    return int(value) if value is not None else 0


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(raw.get("key")),
        value=_unb64(raw.get("value")),
        create_revision=_int(raw.get("create_revision")),
        mod_revision=_int(raw.get("mod_revision")),
        version=_int(raw.get("version")),
        lease=_int(raw.get("lease")),
    )


def _raise_for(body: Any) -> None:
    if isinstance(body, dict) and "error" in body and "code" in body:
        code, message = _int(body.get("code")), str(body.get("message") or body["error"])
        if code == GRPC_OUT_OF_RANGE and "compacted" in message:
            raise EtcdCompacted(message)
        if code == GRPC_UNAVAILABLE or "connection is closing" in message:
            # The member is starting, stopping or has no quorum: try again (elsewhere).
            raise EtcdUnavailable(f"etcd error {code}: {message}")
        raise EtcdRequestError(code, message)


class EtcdClient:
    """One etcd cluster (``endpoints``: ``http(s)://host:port``), over the v3 JSON gateway.

    ``tls`` is an :class:`ssl.SSLContext` for ``https`` endpoints (CA, and a
    client certificate when etcd wants one: ``--client-cert-auth``).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self._current = 0
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            verify=tls if tls is not None else True,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- transport ---------------------------------------------------------------------

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``path`` on the current endpoint, rotating on failure."""
        last: Exception | None = None
        for _ in range(len(self.endpoints)):
            url = self.endpoints[self._current] + path
            try:
                with trio.fail_after(self.timeout):
                    response = await self._http.post(url, json=body)
            except (httpx.TransportError, trio.TooSlowError) as exc:
                last = exc
                self._current = (self._current + 1) % len(self.endpoints)
                continue
            if response.status_code >= 500 and not response.content.startswith(b"{"):
                last = EtcdUnavailable(f"{url}: HTTP {response.status_code}")
                self._current = (self._current + 1) % len(self.endpoints)
                continue
            try:
                data = response.json()
            except ValueError:
                status = response.status_code
                raise EtcdRequestError(-1, f"{url}: not JSON (HTTP {status})") from None
            _raise_for(data)
            if not isinstance(data, dict):
                raise EtcdRequestError(-1, f"{url}: unexpected answer {str(data)[:200]}")
            return data
        raise EtcdUnavailable(f"no etcd endpoint answered: {last}")

    # --- key-value -----------------------------------------------------------------------

    async def range(
        self, key: bytes, *, prefix: bool = False, revision: int = 0, limit: int = 0
    ) -> tuple[list[KeyValue], int]:
        """Keys equal to (or starting with, ``prefix``) ``key``; and the store revision."""
        body: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        if revision:
            body["revision"] = str(revision)
        if limit:
            body["limit"] = str(limit)
        data = await self._call("/v3/kv/range", body)
        kvs = [_kv(kv) for kv in data.get("kvs", [])]
        return kvs, _int(data.get("header", {}).get("revision"))

    async def get(self, key: bytes) -> KeyValue | None:
        kvs, _ = await self.range(key)
        return kvs[0] if kvs else None

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        data = await self._call("/v3/kv/put", body)
        return _int(data.get("header", {}).get("revision"))

    async def delete(self, key: bytes, *, prefix: bool = False) -> int:
        body = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        data = await self._call("/v3/kv/deleterange", body)
        return _int(data.get("deleted"))

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        body = {
            "compare": [c.json() for c in compare],
            "success": [o.body for o in success],
            "failure": [o.body for o in failure],
        }
        data = await self._call("/v3/kv/txn", body)
        return TxnResult(
            succeeded=bool(data.get("succeeded", False)),
            revision=_int(data.get("header", {}).get("revision")),
            responses=list(data.get("responses", [])),
        )

    async def compact(self, revision: int) -> None:
        """Drop history before ``revision`` (watches from older revisions then fail)."""
        try:
            await self._call("/v3/kv/compaction", {"revision": str(revision)})
        except EtcdCompacted:
            pass  # already compacted at or past it

    # --- leases -----------------------------------------------------------------------

    async def lease_grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: its id and the TTL etcd granted (it may raise a too-small TTL)."""
        data = await self._call("/v3/lease/grant", {"TTL": str(ttl)})
        if data.get("error"):
            raise EtcdRequestError(-1, str(data["error"]))
        return _int(data.get("ID")), _int(data.get("TTL"))

    async def lease_keepalive(self, lease: int) -> int:
        """Renew ``lease`` once; returns its TTL. Raises :class:`LeaseNotFound` if it is gone."""
        data = await self._call("/v3/lease/keepalive", {"ID": str(lease)})
        result = data.get("result", data)
        ttl = _int(result.get("TTL")) if isinstance(result, dict) else 0
        if ttl <= 0:
            raise LeaseNotFound(f"lease {lease:x} expired or was revoked")
        return ttl

    async def lease_revoke(self, lease: int) -> None:
        try:
            await self._call("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdRequestError as exc:
            if exc.code != GRPC_NOT_FOUND:
                raise

    # --- watch ------------------------------------------------------------------------

    async def watch(
        self, key: bytes, *, prefix: bool = False, start_revision: int = 0
    ) -> AsyncIterator[list[WatchEvent]]:
        """Batches of events on ``key`` (or the prefix), from ``start_revision`` on.

        A broken or silent stream is re-opened from the revision after the last
        one delivered, so no event is lost or repeated. Raises
        :class:`EtcdCompacted` when that revision was compacted away (the caller
        re-reads with :meth:`range` and watches again) and
        :class:`EtcdUnavailable` when no endpoint could be reached for
        ``WATCH_RECONNECT_S``.
        """
        next_rev = start_revision
        failures = 0
        down_since = 0.0
        while True:
            request: dict[str, Any] = {"key": _b64(key)}
            if prefix:
                request["range_end"] = _b64(prefix_end(key))
            if next_rev:
                request["start_revision"] = str(next_rev)
            url = self.endpoints[self._current] + "/v3/watch"
            timeout = httpx.Timeout(self.timeout, read=WATCH_IDLE_S)
            try:
                async with self._http.stream(
                    "POST", url, json={"create_request": request}, timeout=timeout
                ) as response:
                    async for line in response.aiter_lines():
                        if not line.strip():
                            continue
                        try:
                            data = json.loads(line)
                        except ValueError:
                            raise EtcdRequestError(-1, f"watch: not JSON: {line[:200]}") from None
                        _raise_for(data)
                        result = data.get("result", {})
                        if result.get("canceled"):
                            compacted = _int(result.get("compact_revision"))
                            if compacted:
                                raise EtcdCompacted("watch revision compacted", compacted)
                            raise EtcdRequestError(-1, f"watch canceled: {result}")
                        failures = 0
                        header_rev = _int(result.get("header", {}).get("revision"))
                        raw_events = result.get("events", [])
                        if raw_events:
                            events = [
                                WatchEvent(EventType(e.get("type", "PUT")), _kv(e.get("kv", {})))
                                for e in raw_events
                            ]
                            next_rev = max(next_rev, events[-1].kv.mod_revision + 1)
                            yield events
                        elif result.get("created"):
                            # Events after the header revision follow on this stream.
                            if not next_rev:
                                next_rev = header_rev + 1
                        elif header_rev:
                            next_rev = max(next_rev, header_rev + 1)  # progress notification
            except httpx.ReadTimeout:
                continue  # silent for WATCH_IDLE_S: re-open from next_rev (not a failure)
            except (httpx.TransportError, trio.TooSlowError, EtcdUnavailable):
                # EtcdUnavailable: the member said so on the stream (it is stopping).
                failures += 1
                if failures == 1:
                    down_since = trio.current_time()
                elif trio.current_time() - down_since > WATCH_RECONNECT_S:
                    raise EtcdUnavailable(
                        f"the watch stream could not be re-opened for {WATCH_RECONNECT_S:g} s"
                    ) from None
                self._current = (self._current + 1) % len(self.endpoints)
                await trio.sleep(min(0.05 * failures, 0.5))
