"""Part 1 of ``bench_auth``: the verifier's CPU per request in process, no daemon.

:func:`in_process` runs the same pre-signed requests through three
:class:`~huselet.gateway.admission.Admission` objects (open, bearer token,
signed with a keys file) in tight loops, plus signed framed calls, and then
the signed work again with a short sleep before each request
(:func:`after_pauses`): this VM charges a thread for the memory it touches after
a sleep, so the tight loop is the best case and the slept figure is nearer what
a daemon that waits in epoll between requests pays.

The keys file both this part and the daemon parts use is :data:`KEYS`
(:func:`write_keys`).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tenant_load import BODY, NOISY, QUIET

from huselet.client.signing import format_timestamp, sign_request
from huselet.config import AuthSettings
from huselet.gateway.admission import Admission, AdmissionRequest, CallRequest
from huselet.tenants.keys import read_keys_file
from protocol.ingress_signing import sign_call

NOISY_RATE_PER_S = 20  # tenant noisy's limit (burst the same)

KEYS = f"""
[[tenants]]
name = "quiet"
[[tenants.keys]]
id = "{QUIET.key_id}"
secret = "{QUIET.secret}"

[[tenants]]
name = "noisy"
rate_per_s = {NOISY_RATE_PER_S}
burst = {NOISY_RATE_PER_S}
[[tenants.keys]]
id = "{NOISY.key_id}"
secret = "{NOISY.secret}"
"""


def write_keys(root: Path) -> Path:
    path = root / "keys.toml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(KEYS)
    return path


def in_process(n: int) -> dict[str, float]:
    """µs of CPU per admit+check_body: signed vs open vs bearer, same requests."""
    root = Path(tempfile.mkdtemp(prefix="hlba"))
    ring = read_keys_file(write_keys(root))
    fns = {"quiet": type("F", (), {"tenant": "quiet", "rate": None, "max_concurrent": None})()}
    signed = Admission(AuthSettings(keys_file=root / "keys.toml"), functions=fns.get)
    signed.set_keys(ring)
    open_ = Admission(AuthSettings(), functions=fns.get)
    bearer = Admission(AuthSettings(), bearer_token=b"x" * 32, functions=fns.get)
    reqs = []
    for _ in range(n):
        headers = {"Host": "127.0.0.1:8470", "Content-Type": "application/json"}
        headers.update(sign_request(QUIET, "POST", "/v1/invoke/quiet", headers, BODY))
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        reqs.append(
            AdmissionRequest(
                b"POST",
                b"/v1/invoke/quiet",
                b"",
                raw,
                headers["authorization"].encode(),
                "127.0.0.1",
                "quiet",
            )
        )
    out = {}
    for name, adm, auth in (
        ("open", open_, None),
        ("bearer", bearer, b"Bearer " + b"x" * 32),
        ("signed", signed, None),
    ):
        batch = reqs
        if name != "signed":
            batch = [
                AdmissionRequest(r.method, r.path, r.query, r.headers, auth, r.peer, r.function)
                for r in reqs
            ]
        t0 = time.process_time()
        for r in batch:
            ticket = adm.admit(r)
            ticket.check_body(BODY)
            ticket.release()
        out[name] = (time.process_time() - t0) / n * 1e6
    calls = []
    for i in range(n):
        call_auth = sign_call(
            QUIET.key_id,
            QUIET.secret,
            "quiet",
            BODY,
            "json",
            None,
            date=format_timestamp(),
            nonce=f"n{i}",
        )
        calls.append(CallRequest("quiet", "json", None, call_auth, "127.0.0.1", True))
    t0 = time.process_time()
    for c in calls:
        ticket = signed.admit_call(c)
        ticket.check_body(BODY)
        ticket.release()
    out["framed"] = (time.process_time() - t0) / n * 1e6

    # The same work after the thread slept, as in a daemon that waits in epoll
    # between requests: this VM charges a thread for the memory it touches after a
    # sleep, so the same verification costs several times its tight-loop figure.
    def fresh() -> Admission:  # an empty replay cache: the batches are sent again
        adm = Admission(AuthSettings(keys_file=root / "keys.toml"), functions=fns.get)
        adm.set_keys(ring)
        return adm

    out.update(after_pauses(fresh, reqs[:1000], calls[:1000]))
    return out


PAUSE_S = 0.0002  # about a daemon's wait in epoll between requests at this bench's rates


def after_pauses(
    fresh: Callable[[], Admission], reqs: list[AdmissionRequest], calls: list[CallRequest]
) -> dict[str, float]:
    """µs of thread CPU per admit+check_body, each after a sleep of PAUSE_S."""
    clock = time.thread_time_ns
    out = {}
    for name, batch in (("signed", reqs), ("framed", calls)):
        adm = fresh()
        spent = 0
        for r in batch:
            time.sleep(PAUSE_S)
            t0 = clock()
            ticket = adm.admit(r) if isinstance(r, AdmissionRequest) else adm.admit_call(r)
            ticket.check_body(BODY)
            ticket.release()
            spent += clock() - t0
        out[f"{name}, slept"] = spent / len(batch) / 1e3
    return out
