"""Mutation fuzzers for every parser of outside input (issue 11).

One small engine, five targets. Each target is a thin wrapper that feeds
bytes to the real parser and lists the *typed* errors it may raise; anything
else escaping (``RecursionError``, ``MemoryError``, ``KeyError``, ``ValueError``
from the wrong layer…) is a crash.

- ``config``: ``load_config``'s steps (UTF-8, ``config.limits.parse_toml``,
  ``parse_config``) and ``check_runtimes``; allowed: ``ConfigError``;
- ``frames``: ``protocol.frames.FrameDecoder`` (instance links, framed
  ingress, scheduler link); allowed: ``ProtocolError``;
- ``image_index``: ``cache.validate.parse_image_bytes`` (header, index,
  strtab); allowed: ``CacheError``;
- ``http_head``: the ingress's request parser (``gateway.httpparse``, llhttp)
  plus ``gateway.routes`` (head, route, timeout, bearer, kind); allowed:
  ``HttpProtocolError``, ``HuseletError``;
- ``worker_json``: ``huselet.worker.entries.decode_event`` (JSON events inside
  instances, hardened by helper kinds10); allowed: ``InvalidEvent``.

Mutations: bit flips, random bytes, deletions, duplicated slices, splices of
two seeds, interesting integers at aligned offsets (image headers), and
dictionary tokens repeated up to thousands of times (deep nesting: the shape
of issue 11's ``y = [[[[…]]]]``). Deterministic for a given seed.

Used by ``bench/bench_fuzz.py`` (long runs, >= 100,000 inputs per parser) and
``tests/test_fuzz.py`` (short runs in the suite).
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cache.builder import pack_directory
from cache.errors import CacheError
from cache.validate import parse_image_bytes
from huselet.config import parse_config
from huselet.config.limits import parse_toml
from huselet.errors import ConfigError, HuseletError
from huselet.gateway.connection import MAX_HEAD_BYTES
from huselet.gateway.httpparse import (
    CONNECTION_CLOSED,
    NEED_DATA,
    HttpProtocolError,
    RequestHead,
    RequestParser,
)
from huselet.gateway.routes import (
    check_bearer,
    event_kind,
    match_route,
    parse_timeout_ms,
    read_head,
)
from huselet.runtime import available_runtimes
from huselet.runtime.validate import check_runtimes
from huselet.worker.entries import InvalidEvent, decode_event
from protocol.errors import ProtocolError
from protocol.frames import FrameDecoder, encode_frame
from protocol.link import KIND_JSON

MAX_INPUT = 64 * 1024

INTERESTING_INTS = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 63)


@dataclass
class Target:
    name: str
    run: Callable[[bytes], object]
    allowed: tuple[type[BaseException], ...]
    seeds: list[bytes]
    tokens: list[bytes] = field(default_factory=list)
    max_input: int = MAX_INPUT
    # Structure-aware inputs (valid syntax, hostile values), mixed in with mutations.
    generate: Callable[[random.Random], bytes] | None = None


@dataclass
class Crash:
    data: bytes
    error: str


@dataclass
class FuzzReport:
    target: str
    inputs: int = 0
    crashes: list[Crash] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def crash_count(self) -> int:
        return len(self.crashes)


def mutate(rng: random.Random, data: bytes, target: Target) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 5))):
        op = rng.randrange(9)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:  # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # random byte
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2:  # insert random bytes
            buf[pos:pos] = rng.randbytes(rng.randrange(1, 16))
        elif op == 3 and buf:  # delete a slice
            end = min(len(buf), pos + rng.randrange(1, 64))
            del buf[pos:end]
        elif op == 4 and buf:  # duplicate a slice
            start = rng.randrange(len(buf))
            piece = buf[start : start + rng.randrange(1, 128)]
            buf[pos:pos] = piece * rng.choice((1, 2, 16))
        elif op == 5 and target.tokens:  # insert a token
            buf[pos:pos] = rng.choice(target.tokens)
        elif op == 6 and target.tokens:  # a token repeated: deep nesting, long runs
            buf[pos:pos] = rng.choice(target.tokens) * rng.choice((50, 500, 5000, 50_000))
        elif op == 7:  # splice with another seed
            other = rng.choice(target.seeds)
            cut = rng.randrange(len(other) + 1)
            buf = buf[:pos] + bytearray(other[cut:])
        elif op == 8 and len(buf) >= 8:  # an interesting integer at an aligned offset
            width = rng.choice((1, 2, 4, 8))
            at = rng.randrange(0, len(buf) - width + 1)
            at -= at % width
            value = rng.choice(INTERESTING_INTS) & ((1 << (8 * width)) - 1)
            buf[at : at + width] = value.to_bytes(width, "little")
    return bytes(buf[: target.max_input])


def fuzz(
    target: Target,
    *,
    count: int | None = None,
    seconds: float | None = None,
    seed: int = 0,
    keep: int = 5,
) -> FuzzReport:
    """Run ``target`` on mutated inputs until ``count`` inputs or ``seconds`` pass."""
    assert count is not None or seconds is not None
    rng = random.Random(seed)
    report = FuzzReport(target.name)
    corpus = list(target.seeds)
    started = time.perf_counter()
    deadline = None if seconds is None else started + seconds
    while True:
        if count is not None and report.inputs >= count:
            break
        if deadline is not None and report.inputs % 64 == 0 and time.perf_counter() > deadline:
            break
        data = rng.choice(corpus) if report.inputs < len(corpus) else None
        if data is None:
            if target.generate is not None and rng.random() < 0.3:
                data = target.generate(rng)
            else:
                data = mutate(rng, rng.choice(corpus), target)
        report.inputs += 1
        try:
            target.run(data)
        except target.allowed:
            continue
        except BaseException as exc:  # the point: anything else is a crash
            if isinstance(exc, KeyboardInterrupt):
                raise
            if len(report.crashes) < keep:
                report.crashes.append(Crash(data, f"{type(exc).__name__}: {str(exc)[:200]}"))
            else:
                report.crashes.append(Crash(b"", type(exc).__name__))
            continue
        # Inputs the parser accepted are good material for further mutation.
        if len(corpus) < 256 and rng.random() < 0.05:
            corpus.append(data)
    report.seconds = time.perf_counter() - started
    return report


# --- targets ------------------------------------------------------------------------


_WORKDIR = Path(tempfile.mkdtemp(prefix="hlfuzz"))
_KNOWN_RUNTIMES = frozenset(available_runtimes())


def _config_seeds() -> list[bytes]:
    repo = Path(__file__).resolve().parent.parent
    pkg = _WORKDIR / "pkg"
    pkg.mkdir(exist_ok=True)
    (pkg / "main.py").write_text("def handler(event, context):\n    return event\n")
    rich = f"""
[node]
id = "n1"
state_dir = "{_WORKDIR}/state"
run_dir = "/tmp/hlfz"
log_level = "debug"
[gateway]
http = "127.0.0.1:8470"
max_body_bytes = 65536
max_buffered_mb = 64
[cache]
disk_budget_mb = 100
publish_dir = "{_WORKDIR}/publish"
[health]
heartbeat_interval_ms = 100
[runtimes.fork]
uid_base = 300000
pids_max = 64
cgroup_parent = "a/b"
[scheduler]
addresses = ["127.0.0.1:7000", "[::1]:7001"]
labels = {{ zone = "a" }}
[[functions]]
name = "f"
package = "{pkg}"
handler = "main:handler"
runtime = "fork"
env = {{ A = "1", B = "2" }}
memory_mb = 64
[[functions]]
name = "g"
digest = "{"ab" * 32}"
origin = "https://example.invalid/x"
handler = "a.b:c"
"""
    seeds = [rich.encode(), (repo / "systemd" / "huselet.toml").read_bytes()]
    seeds.append(b"y = " + b"[" * 300 + b"]" * 300 + b"\n")
    seeds.append(b"[node]\ndrain_grace_ms = 99999999999999999999999999\n")
    return seeds


_HOSTILE_VALUES: list[object] = [
    *(-1, 0, 1, 7, 16, 999, 2**31, 2**63 - 1, -(2**63), 1.5, -0.0, 1e308, True, False),
    *("", " ", "..", "../../x", "/", "/etc", "/dev/zero", "\u00e9", "a" * 300, "127.0.0.1:0"),
    *("[::1]:99999", "http://[", "file:///", "x:y", "main:handler", "fork", "process"),
    [],
    {},
    [1, "a"],
    {"a": {"b": {"c": []}}},
    ["127.0.0.1:1"] * 3,
]


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if value == value else "nan"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    raise TypeError(type(value))


def _config_generator(seed_text: bytes) -> Callable[[random.Random], bytes]:
    """Valid TOML from the rich seed with a few values replaced by hostile ones."""
    import copy
    import tomllib

    base = tomllib.loads(seed_text.decode())

    def leaves(node: object, path: tuple[object, ...]) -> list[tuple[object, ...]]:
        out: list[tuple[object, ...]] = [path] if path else []
        if isinstance(node, dict):
            for k, v in node.items():
                out += leaves(v, (*path, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                out += leaves(v, (*path, i))
        return out

    paths = leaves(base, ())
    keys = ["uid_base", "pids_max", "memory_mb", "image", "package", "publish_dir", "zzz"]

    def generate(rng: random.Random) -> bytes:
        doc = copy.deepcopy(base)
        for _ in range(rng.randrange(1, 4)):
            path = rng.choice(paths)
            node: object = doc
            try:
                for part in path[:-1]:
                    node = node[part]  # type: ignore[index]
                value = copy.deepcopy(rng.choice(_HOSTILE_VALUES))  # never shared: no cycles
                if isinstance(node, dict) and rng.random() < 0.2:
                    node[rng.choice(keys)] = value
                else:
                    node[path[-1]] = value  # type: ignore[index]
            except (KeyError, IndexError, TypeError):
                continue
        if not isinstance(doc, dict):
            return b""
        return "\n".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in doc.items()).encode()

    return generate


def run_config(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # load_config's own refusal ("is not UTF-8")
    raw = parse_toml(text, "<fuzz>")
    config = parse_config(raw, base_dir=_WORKDIR, known_runtimes=_KNOWN_RUNTIMES)
    check_runtimes(config)


def _frame_seeds() -> list[bytes]:
    messages = [
        {"t": "hello", "id": "i-1", "token": "x" * 32, "v": 1},
        {"t": "req", "id": 7, "body": b"\x00" * 100, "kind": "json", "deadline_ms": 1000},
        {"t": "res", "id": 7, "ok": True, "value": [1, 2, {"a": [3, 4.5, None]}]},
        {"t": "delta", "seq": 12, "upserts": [{"name": "f", "version": 3, "body": {}}]},
    ]
    return [b"".join(encode_frame(m) for m in messages[:i] + messages[i:]) for i in range(4)]


def run_frames(data: bytes) -> None:
    decoder = FrameDecoder(max_frame=MAX_INPUT)
    # In two pieces, as a socket would deliver it.
    cut = len(data) // 3
    decoder.receive_data(data[:cut])
    for _ in decoder.frames():
        pass
    decoder.receive_data(data[cut:])
    for message in decoder.frames():
        repr(message)  # what logging a message does: must not recurse too deep


def _image_seeds() -> list[bytes]:
    seeds = []
    for i, files in enumerate(
        (
            {"main.py": "def handler(e, c):\n    return e\n"},
            {"pkg/__init__.py": "", "pkg/a.py": "A = 1\n", "data/x.bin": "x" * 5000},
        )
    ):
        src = _WORKDIR / f"img{i}"
        for rel, content in files.items():
            path = src / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        out = _WORKDIR / "images"
        out.mkdir(exist_ok=True)
        seeds.append(pack_directory(src, out).path.read_bytes())
    return seeds


def run_image_index(data: bytes) -> None:
    parse_image_bytes(data)


def _http_seeds() -> list[bytes]:
    return [
        b"POST /v1/invoke/hello HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nAuthorization: Bearer tok\r\nX-Huselet-Timeout-Ms: 500\r\n\r\n{}",
        b"POST /v1/invoke/a-b_c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Expect: 100-continue\r\nX-Huselet-Request-Id: abc.def\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        b"GET /healthz?x=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n",
        b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain+json; a=b\r\n\r\n",
    ]


def run_http_head(data: bytes) -> None:
    parser = RequestParser(MAX_HEAD_BYTES)
    parser.receive(data)
    parser.receive(b"")
    for _ in range(64):
        event = parser.next_event()
        if event is NEED_DATA or event is CONNECTION_CLOSED:
            return
        if type(event) is RequestHead:
            head = read_head(event)
            try:
                match_route(head.method, head.target)
            except HuseletError:
                pass
            try:
                parse_timeout_ms(head.timeout_ms)
            except HuseletError:
                pass
            try:
                check_bearer(head.authorization, b"tok")
            except HuseletError:
                pass
            event_kind(head.content_type)
            _ = head.has_body and head.size > MAX_HEAD_BYTES


def _json_seeds() -> list[bytes]:
    docs = [{"name": "ops", "n": [1, 2.5, None, True]}, [], "text", 12345678901234567890]
    return [json.dumps(d).encode() for d in docs] + [b'{"a": "\\u00e9\\ud83d\\ude00"}']


def run_worker_json(data: bytes) -> None:
    # The thin wrapper named in the report: the worker's own decoding, nothing else.
    decode_event(data, KIND_JSON)


def targets() -> dict[str, Target]:
    return {
        "config": Target(
            "config",
            run_config,
            (ConfigError,),
            config_seeds := _config_seeds(),
            tokens=[b"[", b"{a=", b"[[functions]]\n", b"= ", b"\n", b'"', b"9" * 30, b"inf"],
            generate=_config_generator(config_seeds[0]),
        ),
        "frames": Target(
            "frames",
            run_frames,
            (ProtocolError,),
            _frame_seeds(),
            tokens=[b"\x91", b"\x81\xa1a", b"\xdc\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xc4\xff"],
        ),
        "image_index": Target(
            "image_index",
            run_image_index,
            (CacheError,),
            _image_seeds(),
            tokens=[b"\xff" * 8, b"\x00" * 8, b"/", b"..", b"\x00"],
        ),
        "http_head": Target(
            "http_head",
            run_http_head,
            (HttpProtocolError, HuseletError),
            _http_seeds(),
            tokens=[b"\r\n", b": ", b"Content-Length: ", b"Transfer-Encoding: chunked\r\n", b"a"],
            max_input=4 * MAX_HEAD_BYTES,
        ),
        "worker_json": Target(
            "worker_json",
            run_worker_json,
            (InvalidEvent,),
            _json_seeds(),
            tokens=[b"[", b'{"a":', b"1e999999", b"\\ud800", b"-"],
        ),
    }


if __name__ == "__main__":  # quick manual run: python tests/fuzz_support.py [N]
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    for t in targets().values():
        r = fuzz(t, count=n)
        print(t.name, r.inputs, r.crash_count, [c.error for c in r.crashes[:3]])
