"""Configuration validation: every refusal names its key path and the problem."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from huselet.config import load_config, parse_config
from huselet.errors import ConfigError
from huselet.runtime import available_runtimes

REPO = Path(__file__).resolve().parents[2]
# The shipped configs run functions on the isolated fork runtime (safe by default).
RUNTIMES = frozenset(available_runtimes())


def make_package(tmp_path: Path, module: str = "main") -> Path:
    pkg = tmp_path / "pkg"
    pkg.mkdir(exist_ok=True)
    (pkg / f"{module}.py").write_text("def handler(event, context):\n    return event\n")
    return pkg


def base(tmp_path: Path, **fn: object) -> dict:
    make_package(tmp_path)
    function = {"name": "f", "package": "pkg", "handler": "main:handler", **fn}
    return {
        # Unix socket paths are short (108 bytes): pytest's tmp_path is too long for run_dir.
        "node": {"state_dir": str(tmp_path / "s"), "run_dir": "/tmp/hl-config-test/r"},
        "functions": [function],
    }


def refuse(raw: dict, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, base_dir=tmp_path)
    return str(info.value)


def test_issue_example_is_valid_and_resolves_relative_package() -> None:
    config = load_config(REPO / "systemd" / "huselet.toml", known_runtimes=RUNTIMES)
    assert config.node.id == "node-a"
    assert str(config.gateway.http) == "127.0.0.1:8470"
    assert config.gateway.max_connections_per_source == 256
    (fn,) = config.functions
    assert fn.package == (REPO / "huselet" / "examples" / "hello").resolve()
    assert (fn.memory_mb, fn.timeout_ms, fn.max_instances) == (128, 5000, 8)
    assert config.admin.socket == Path("/run/huselet/admin.sock")


def test_embedded_default_serves_hello() -> None:
    config = load_config(None, known_runtimes=RUNTIMES)
    assert [f.name for f in config.functions] == ["hello"]
    assert (config.functions[0].package / "main.py").is_file()
    assert config.admin.socket == config.node.run_dir / "admin.sock"
    if os.geteuid() == 0:
        assert config.node.run_dir == Path("/run/huselet")


def test_timeout_given_as_string_is_refused_with_key_path(tmp_path: Path) -> None:
    msg = refuse(base(tmp_path, timeout_ms="5s"), tmp_path)
    assert msg == 'functions[0].timeout_ms: expected a positive integer, got "5s"'


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r["functions"][0].update(tiemout_ms=5), "functions[0].tiemout_ms: unknown key"),
        (lambda r: r.update(extra={}), "extra: unknown key"),
        (
            lambda r: r["functions"][0].update(instance_mode="once"),
            "functions[0].instance_mode: expected one of reuse, single",
        ),
        (
            lambda r: r["functions"][0].update(memory_mb=True),
            "functions[0].memory_mb: expected an integer ≥ 16, got true",
        ),
        (
            lambda r: r["functions"][0].update(max_instances=0),
            "functions[0].max_instances: expected a positive integer, got 0",
        ),
        (lambda r: r["functions"][0].update(name="Bad Name"), "functions[0].name: invalid value"),
        (lambda r: r["functions"][0].update(handler="main"), "functions[0].handler: invalid value"),
        (
            lambda r: r["functions"][0].update(handler="nope:handler"),
            "functions[0].handler: module 'nope' not found",
        ),
        (
            lambda r: r["functions"][0].update(package="missing"),
            "functions[0].package: package directory",
        ),
        (
            lambda r: r["functions"][0].update(runtime="nope"),
            "functions[0].runtime: expected one of",
        ),
        (
            lambda r: r["functions"][0].update(min_instances=9),
            "functions[0].min_instances: 9 exceeds",
        ),
        (lambda r: r["functions"][0].update(env={"A": 1}), "functions[0].env.A: expected a string"),
        (
            lambda r: r["functions"][0].pop("handler"),
            "functions[0].handler: required key is missing",
        ),
        (lambda r: r.update(gateway={"http": "localhost"}), 'gateway.http: expected "host:port"'),
        (
            lambda r: r.update(gateway={"http": "example.com:80"}),
            "gateway.http: 'example.com' is not an IP address",
        ),
        (
            lambda r: r.update(gateway={"http": "127.0.0.1:70000"}),
            "gateway.http: port 70000 is out of range",
        ),
        (
            lambda r: r.update(gateway={"http": "0.0.0.0:8470"}),
            "gateway.http: 0.0.0.0:8470 is reachable from other hosts",
        ),
        (
            lambda r: r.update(gateway={"queue_per_function": -1}),
            "gateway.queue_per_function: expected a positive integer",
        ),
        (
            lambda r: r.update(gateway={"max_connections_per_source": -1}),
            "gateway.max_connections_per_source: expected a non-negative integer",
        ),
        (lambda r: r.update(node={"run_dir": "/tmp/" + "x" * 80}), "node.run_dir: "),
        (lambda r: r.update(node={"log_level": "loud"}), "node.log_level: expected one of"),
        (
            lambda r: r.update(admin={"allowed_uids": ["root"]}),
            "admin.allowed_uids: expected an array",
        ),
        (lambda r: r.update(functions={"name": "x"}), "functions: expected an array of tables"),
        (
            lambda r: r["functions"].append(dict(r["functions"][0])),
            "functions[1].name: duplicate function name 'f'",
        ),
    ],
)
def test_invalid_values_are_refused(tmp_path: Path, mutate, expected: str) -> None:
    raw = base(tmp_path)
    mutate(raw)
    assert refuse(raw, tmp_path).startswith(expected)


def test_public_address_allowed_with_token_file(tmp_path: Path) -> None:
    raw = base(tmp_path)
    (tmp_path / "token").write_text("secret\n")
    raw["gateway"] = {"http": "[::]:8470", "auth_token_file": "token"}
    config = parse_config(raw, base_dir=tmp_path)
    assert config.gateway.http.host == "::" and config.gateway.auth_token_file == tmp_path / "token"


def test_defaults_fill_in(tmp_path: Path) -> None:
    config = parse_config(base(tmp_path), base_dir=tmp_path)
    fn = config.functions[0]
    assert fn.runtime == "process" and fn.max_queue == config.gateway.queue_per_function
    assert fn.package == (tmp_path / "pkg").resolve()
    assert config.admin.socket == Path("/tmp/hl-config-test/r/admin.sock")


def test_unreadable_and_invalid_toml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="is not UTF-8"):
        load_config(bad)
    # What a reload may meet: never block on a FIFO, never swallow a runaway file.
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_config(fifo)
    bad.write_bytes(b"# " + b"x" * (4 << 20) + b"\n")
    with pytest.raises(ConfigError, match="is larger than 4 MiB"):
        load_config(bad)


def test_health_table_is_validated(tmp_path: Path) -> None:
    base = '[node]\nstate_dir = "s"\nrun_dir = "/tmp/hl-h"\n'
    cases = {
        "heartbeat_interval_ms = 0": "health.heartbeat_interval_ms: expected a positive integer",
        "disk_enter_free_percent = 101": "expected a percentage 1..100",
        "fd_leave_percent = 90": "health.fd_leave_percent: 90 must be below fd_enter_percent",
        "breaker_max_open_ms = 10": "is below breaker_open_ms",
        "heartbeat = 1": "health.heartbeat: unknown key",
    }
    for line, message in cases.items():
        path = tmp_path / "h.toml"
        path.write_text(base + "[health]\n" + line + "\n")
        with pytest.raises(ConfigError, match=message):
            load_config(path)


def test_default_toml_is_the_one_shipped() -> None:
    raw = tomllib.loads((REPO / "huselet" / "default.toml").read_text())
    assert raw["functions"][0]["package"] == "examples/hello"


# --- package images and the [cache] table -------------------------------------------


DIGEST = "ab" * 32


def image_of(tmp_path: Path) -> Path:
    from cache.builder import pack_directory

    out = tmp_path / "built"
    out.mkdir(exist_ok=True)
    return pack_directory(make_package(tmp_path), out / "app.hlimg").path


def code(tmp_path: Path, **fields: object) -> dict:
    raw = base(tmp_path)
    del raw["functions"][0]["package"]
    raw["functions"][0].update(fields)
    return raw


def test_code_by_image_file_or_by_digest_and_origin(tmp_path: Path) -> None:
    image_of(tmp_path)
    raw = code(tmp_path, image="built/app.hlimg")
    raw["functions"].append(
        {"name": "g", "handler": "main:handler", "digest": DIGEST, "origin": "images"}
    )
    raw["functions"].append(
        {"name": "h", "handler": "m:h", "digest": DIGEST, "origin": "https://cdn.example/i"}
    )
    f, g, h = parse_config(raw, base_dir=tmp_path).functions
    assert (f.code_source, f.image) == ("image", (tmp_path / "built" / "app.hlimg").resolve())
    assert f.package == Path("/")  # the worker's cwd: nothing of it lives on the host
    assert (g.code_source, g.digest, g.origin) == ("digest", DIGEST, str(tmp_path / "images"))
    assert h.origin == "https://cdn.example/i"


def test_cache_table_defaults_and_values(tmp_path: Path) -> None:
    config = parse_config(base(tmp_path), base_dir=tmp_path)
    assert config.cache.pack_directories and config.cache.publish_dir is None
    assert config.functions[0].code_source == "package"
    raw = code(tmp_path, digest=DIGEST)  # no origin: the default one serves
    raw["cache"] = {
        "disk_budget_mb": 100,
        "memory_budget_mb": 10,
        "max_image_mb": 50,
        "default_origin": "http://origin.example:8080/images",
        "publish_dir": "publish",
        "scrub_interval_s": 0,
        "prefetch_concurrency": 4,
        "predict": False,
    }
    config = parse_config(raw, base_dir=tmp_path)
    assert config.cache.publish_dir == (tmp_path / "publish").resolve()
    assert config.cache.default_origin == "http://origin.example:8080/images"
    assert config.functions[0].origin is None
    assert (config.cache.scrub_interval_s, config.cache.prefetch_concurrency) == (0, 4)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "functions[0].package: required key is missing (name the code with package, image"),
        (
            {"package": "pkg", "image": "x.hlimg"},
            "functions[0].image: conflicts with package; set exactly one of package, image or",
        ),
        ({"image": "x.hlimg", "digest": DIGEST}, "functions[0].digest: conflicts with image"),
        ({"package": "pkg", "origin": "/srv"}, "functions[0].origin: only allowed together with"),
        ({"digest": "ABC"}, 'functions[0].digest: invalid value "ABC" (expected 64 lowercase'),
        ({"digest": DIGEST}, "functions[0].origin: required with digest when cache.default_origin"),
        (
            {"digest": DIGEST, "origin": "ftp://x/y"},
            "functions[0].origin: unsupported scheme 'ftp'",
        ),
        ({"digest": DIGEST, "origin": "http:///images"}, "functions[0].origin: "),
        ({"image": "nope.hlimg"}, "functions[0].image: image "),
        ({"image": "pkg/main.py"}, "functions[0].image: "),
    ],
)
def test_code_sources_are_validated(tmp_path: Path, fields: dict, expected: str) -> None:
    assert refuse(code(tmp_path, **fields), tmp_path).startswith(expected)


def test_image_must_hold_the_handler_module(tmp_path: Path) -> None:
    image_of(tmp_path)
    msg = refuse(code(tmp_path, image="built/app.hlimg", handler="other:handler"), tmp_path)
    assert msg.startswith("functions[0].handler: module 'other' not found in image")
    assert "not a usable image" in refuse(code(tmp_path, image="pkg/main.py"), tmp_path)


@pytest.mark.parametrize(
    ("cache", "expected"),
    [
        ({"disk_budget_mb": 0}, "cache.disk_budget_mb: expected a positive integer, got 0"),
        (
            {"disk_budget_mb": 10, "max_image_mb": 20},
            "cache.max_image_mb: 20 exceeds disk_budget_mb 10",
        ),
        ({"scrub_interval_s": -1}, "cache.scrub_interval_s: expected a non-negative integer"),
        ({"predict": "yes"}, 'cache.predict: expected true or false, got "yes"'),
        ({"publish_dir": "s/cache/images"}, "cache.publish_dir: must not be inside the cache"),
        ({"default_origin": "gopher://x"}, "cache.default_origin: unsupported scheme 'gopher'"),
        ({"budget": 1}, "cache.budget: unknown key"),
    ],
)
def test_cache_table_is_validated(tmp_path: Path, cache: dict, expected: str) -> None:
    raw = base(tmp_path)
    raw["cache"] = cache
    assert refuse(raw, tmp_path).startswith(expected)


def test_standalone_is_the_default(tmp_path: Path) -> None:
    assert parse_config(base(tmp_path), base_dir=tmp_path).scheduler is None


def test_scheduler_table_is_parsed_with_defaults(tmp_path: Path) -> None:
    raw = base(tmp_path)
    raw["node"]["id"] = "node-7"
    raw["scheduler"] = {
        "addresses": ["127.0.0.1:7000", "[::1]:7001"],
        "memory_mb": 2048,
        "labels": {"zone": "a"},
        "batch_delay_ms": 0,
    }
    s = parse_config(raw, base_dir=tmp_path).scheduler
    assert s is not None
    assert [str(a) for a in s.addresses] == ["127.0.0.1:7000", "[::1]:7001"]
    assert (s.node_id, s.memory_mb, dict(s.labels), s.batch_delay_ms) == (
        "node-7",
        2048,
        {"zone": "a"},
        0,
    )
    assert (s.backoff_base_ms, s.backoff_max_ms, s.persist_functions) == (100, 5_000, True)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({}, "scheduler.addresses: required key is missing"),
        ({"addresses": []}, "scheduler.addresses: at least one scheduler address is required"),
        ({"addresses": "127.0.0.1:7000"}, "scheduler.addresses: expected an array of addresses"),
        ({"addresses": ["127.0.0.1:7000", "nohost"]}, "scheduler.addresses[1]: expected"),
        ({"addresses": ["127.0.0.1:99999"]}, "scheduler.addresses[0]: port 99999 is out of range"),
        ({"addresses": ["127.0.0.1:7000"], "node_id": "has space"}, "scheduler.node_id: invalid"),
        (
            {"addresses": ["127.0.0.1:7000"], "backoff_base_ms": 500, "backoff_max_ms": 100},
            "scheduler.backoff_max_ms: 100 is below backoff_base_ms 500",
        ),
        ({"addresses": ["127.0.0.1:7000"], "labels": {"zone": 1}}, "scheduler.labels.zone"),
        (
            {"addresses": ["127.0.0.1:7000"], "heartbeat_ms": 5},
            "scheduler.heartbeat_ms: unknown key",
        ),
    ],
)
def test_scheduler_table_is_validated(tmp_path: Path, table: dict, expected: str) -> None:
    raw = base(tmp_path)
    raw["scheduler"] = table
    assert refuse(raw, tmp_path).startswith(expected)


def test_a_function_spec_from_the_scheduler_is_validated_like_the_file(tmp_path: Path) -> None:
    from huselet.config import parse_function_spec

    config = parse_config(base(tmp_path), base_dir=tmp_path)
    pkg = str(tmp_path / "pkg")
    fn = parse_function_spec(
        {"name": "g", "package": pkg, "handler": "main:handler", "max_instances": 2},
        config,
        known_runtimes=["process"],
        where="spec(g)",
    )
    assert (fn.name, fn.max_instances, fn.package) == ("g", 2, Path(pkg).resolve())
    with pytest.raises(ConfigError) as info:
        parse_function_spec(
            {"name": "g", "package": pkg, "handler": "main:handler", "runtime": "gvisor"},
            config,
            known_runtimes=["process"],
            where="spec(g)",
        )
    assert str(info.value).startswith("spec(g).runtime: expected one of process")


def test_layers_by_image_file_pinned_or_by_digest(tmp_path: Path) -> None:
    from huselet.config import LayerSettings

    image = image_of(tmp_path)
    layers = [
        {"image": "built/app.hlimg", "digest": DIGEST},
        {"digest": DIGEST, "origin": "https://cdn.example/layers"},
    ]
    fn = parse_config(base(tmp_path, layers=layers), base_dir=tmp_path).functions[0]
    assert fn.layers == (
        LayerSettings(image=image.resolve(), digest=DIGEST),
        LayerSettings(digest=DIGEST, origin="https://cdn.example/layers"),
    )
    assert parse_config(base(tmp_path), base_dir=tmp_path).functions[0].layers == ()


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ([{}], "functions[0].layers[0].image: a layer needs image, or digest (+ origin)"),
        ([{"digest": DIGEST}], "layers[0].origin: required with digest"),
        ([{"image": "nope.hlimg"}], "layers[0].image: layer image"),
        ([{"image": "built/app.hlimg", "origin": "x"}], "layers[0].origin: only allowed with"),
        ([{"digest": "xyz", "origin": "x"}], "layers[0].digest: invalid value"),
        ([{"digest": DIGEST, "origin": "x", "extra": 1}], "layers[0].extra: unknown key"),
        ([{"digest": DIGEST, "origin": "x"}] * 9, "functions[0].layers: at most 8 layers"),
        ("x.hlimg", "functions[0].layers: expected an array of tables"),
    ],
)
def test_layers_are_validated(tmp_path: Path, layers: object, expected: str) -> None:
    image_of(tmp_path)
    assert expected in refuse(base(tmp_path, layers=layers), tmp_path)


def test_dependency_and_watch_keys(tmp_path: Path) -> None:
    config = parse_config(base(tmp_path), base_dir=tmp_path)
    assert (config.cache.allow_sdist, config.cache.pip_timeout_s) == (False, 600)
    assert config.cache.watch_packages is False
    raw = base(tmp_path)
    raw["cache"] = {"allow_sdist": True, "pip_timeout_s": 30, "watch_packages": True}
    cache = parse_config(raw, base_dir=tmp_path).cache
    assert (cache.allow_sdist, cache.pip_timeout_s, cache.watch_packages) == (True, 30, True)
    raw["cache"] = {"pip_timeout_s": 0}
    assert "cache.pip_timeout_s: expected a positive integer" in refuse(raw, tmp_path)
    assert config.cache.pip_concurrency == 4
    raw["cache"] = {"pip_concurrency": 0}
    assert "cache.pip_concurrency: expected a positive integer" in refuse(raw, tmp_path)
    raw["cache"] = {"pip_concurrency": 33}
    assert "cache.pip_concurrency: 33 is over the maximum of 32" in refuse(raw, tmp_path)
