"""Configuration validation: every refusal names its key path and the problem."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from huselet.config import load_config, parse_config
from huselet.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


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
    config = load_config(REPO / "systemd" / "huselet.toml")
    assert config.node.id == "node-a"
    assert str(config.gateway.http) == "127.0.0.1:8470"
    (fn,) = config.functions
    assert fn.package == (REPO / "huselet" / "examples" / "hello").resolve()
    assert (fn.memory_mb, fn.timeout_ms, fn.max_instances) == (128, 5000, 8)
    assert config.admin.socket == Path("/run/huselet/admin.sock")


def test_embedded_default_serves_hello() -> None:
    config = load_config(None)
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


def test_default_toml_is_the_one_shipped() -> None:
    raw = tomllib.loads((REPO / "huselet" / "default.toml").read_text())
    assert raw["functions"][0]["package"] == "examples/hello"
