"""``bench_invoke``'s signed mode: the same no-op invocations, each signed by a tenant's key.

``signed-http`` sends requests signed with tenant ``quiet``'s key
(:func:`tenant_load.raw_request`, i.e. :mod:`huselet.client.signing`) to a
daemon with ``[auth]`` on and the function owned by that tenant. A signature
is accepted once (the replay cache), so every request is signed anew, and
before its round starts (:class:`PresignedPool`): the load generator's signing
is not in the measured window. Requests beyond the pool are signed as they go
and counted (a pool too small for the machine shows, it does not skew silently).

Beside the table, per concurrency level, what verification costs the daemon:

- ``paired``: signed-http minus huselet-http daemon µs per request, paired per
  interleaved round (two daemons, so it includes how two daemons doing the
  same work differ: ±5 µs here, bench_auth's A/A);
- ``direct``: the daemon's own timing of one verification in 16 (signature
  plus body hash, thread CPU; admin socket ``status``, ``admission.verify_cost``),
  over the whole run.

``bench_auth.py`` remains the finer instrument (one daemon with ``[auth]``
switched on and off, A/A rows, framed calls).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from loadgen import LoadResult, run_load
from tenant_inproc import write_keys
from tenant_load import QUIET, raw_request

from huselet.admin.client import AdminClient
from huselet.admin.errors import AdminError

# Requests signed per second of a round, before it starts: above what one daemon
# serves on a 2-core VM (~9-12k req/s), so the pool rarely runs dry.
PRESIGN_PER_S = 16_000
TARGET_US = 20.0  # the bound on verification, daemon CPU per request


class Served(Protocol):
    """What the signed load reads of bench_invoke's Server."""

    @property
    def address(self) -> Any: ...


class PresignedPool:
    """Signed requests, each used once: taken from a pool signed in advance, then signed live."""

    def __init__(self, port: int, function: str, count: int) -> None:
        self._port, self._function = port, function
        self._pool = [raw_request(port, function, QUIET) for _ in range(count)]
        self.late = 0  # requests signed during the round (the pool ran dry)

    def __call__(self) -> bytes:
        if self._pool:
            return self._pool.pop()
        self.late += 1
        return raw_request(self._port, self._function, QUIET)


def signed_config(root: Path) -> tuple[str, str]:
    """``start_huselet``'s extra and function config: ``[auth]`` on, the function tenant quiet's."""
    return f'[auth]\nkeys_file = "{write_keys(root)}"', 'tenant = "quiet"'


LATE: list[int] = []  # per round: requests signed live (printed with the summary)


async def signed_http_load(
    server: Served,
    conc: int,
    duration: float,
    warmup: float,
    on_window: Callable[[str], None] | None,
) -> LoadResult:
    host, port = server.address["http"]
    pool = PresignedPool(port, "noop", int(PRESIGN_PER_S * (warmup + duration)))
    result = await run_load(
        host,
        port,
        "/v1/invoke/noop",
        b"",
        concurrency=conc,
        duration=duration,
        warmup=warmup,
        on_window=on_window,
        next_request=pool,
    )
    LATE.append(pool.late)
    return result


def verify_us(before: Mapping[str, Any], after: Mapping[str, Any]) -> float:
    """µs of CPU per request the daemon timed verifying between two snapshots.

    The mean of the sampled requests (one in ``sample_every``) of each step,
    signature (the head) plus body (its SHA-256), each including one clock read.
    """
    total = 0.0
    for step in ("signature", "body"):
        samples = after[step]["samples"] - before[step]["samples"]
        if samples:
            total += (after[step]["cpu_ns"] - before[step]["cpu_ns"]) / samples / 1e3
    return total


def direct_us(servers: Mapping[str, Served]) -> float | None:
    """The signed daemon's own timing of verification since it started (admin socket
    ``status``, ``admission.verify_cost``), if it ran."""
    if "huselet-signed" not in servers:
        return None
    admin = AdminClient(servers["huselet-signed"].address["admin"], timeout_s=30)
    nothing = {step: {"samples": 0, "cpu_ns": 0} for step in ("signature", "body")}
    try:
        cost = admin.call("status")["admission"]["verify_cost"]
    except (AdminError, KeyError, TypeError) as exc:  # the run's table still prints
        print(f"invoke_signed: no verification account from the daemon ({exc!r})")
        return None
    return verify_us(nothing, cost)


class Rounds(Protocol):
    """A cell of bench_invoke's table: its rounds, each with the daemon's µs per request."""

    @property
    def rounds(self) -> Sequence[Any]: ...


def print_verification(
    modes: Sequence[str],
    levels: Sequence[int],
    cells: Mapping[tuple[str, int], Rounds],
    direct_us: float | None,
) -> dict[int, float]:
    """Per level, signed-http minus huselet-http daemon µs (median of paired rounds)."""
    if "signed-http" not in modes or "huselet-http" not in modes:
        return {}

    def daemon_us(mode: str, conc: int) -> list[float | None]:
        return [r.daemon_us for r in cells[(mode, conc)].rounds]

    print(
        f"\nsignature verification, daemon CPU per request (target < {TARGET_US:g} us; "
        "bench_auth.py measures it finer):"
    )
    out = {}
    for conc in levels:
        pairs = [
            s - o
            for s, o in zip(
                daemon_us("signed-http", conc), daemon_us("huselet-http", conc), strict=True
            )
            if s is not None and o is not None
        ]
        if not pairs:
            continue
        out[conc] = statistics.median(pairs)
        print(
            f"  c={conc:<4} paired signed-http - huselet-http {out[conc]:6.1f} us "
            f"(rounds {min(pairs):.1f} .. {max(pairs):.1f})"
        )
    if direct_us is not None:
        print(f"  direct (the daemon's timing of 1 in 16, whole run) {direct_us:6.1f} us")
    if any(LATE):
        print(f"  (requests signed during a round, the pool ran dry: {sum(LATE)})")
    return out
