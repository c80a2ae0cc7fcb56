"""``[auth]`` and the tenant keys of ``[[functions]]``: parsed, validated with key paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from huselet.config import parse_config
from huselet.config.auth import RateLimit
from huselet.errors import ConfigError

KEYS = (
    '[[tenants]]\nname = "acme"\n[[tenants.keys]]\nid = "HKONE1"\nsecret = "0123456789abcdefgh"\n'
)


def raw(tmp_path: Path, auth: dict | None = None, **fn: object) -> dict:
    pkg = tmp_path / "pkg"
    pkg.mkdir(exist_ok=True)
    (pkg / "main.py").write_text("def handler(e, c):\n    return e\n")
    out: dict = {
        "node": {"state_dir": str(tmp_path / "s"), "run_dir": "/tmp/hl-config-test/r"},
        "functions": [{"name": "f", "package": "pkg", "handler": "main:handler", **fn}],
    }
    if auth is not None:
        out["auth"] = auth
    return out


def keys_file(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(KEYS)
    os.chmod(path, mode)
    return path


def test_defaults(tmp_path: Path) -> None:
    config = parse_config(raw(tmp_path), base_dir=tmp_path)
    assert config.auth.keys_file is None and config.auth.max_skew_s == 300
    assert config.auth.replay_cache_bytes == 32 << 20
    fn = config.functions[0]
    assert fn.tenant is None and fn.rate is None and fn.max_concurrent is None


def test_values(tmp_path: Path) -> None:
    keys_file(tmp_path)
    auth = {
        "keys_file": "keys.toml",
        "max_skew_s": 60,
        "source_rate_per_s": 5,
        "allow_cidrs": ["10.0.0.0/8"],
        "deny_cidrs": ["10.9.0.0/16", "::1"],
        "throttle_delay_ms": 0,
    }
    config = parse_config(
        raw(tmp_path, auth, tenant="acme", rate_per_s=0.5, burst=4, max_concurrent=2),
        base_dir=tmp_path,
    )
    assert config.auth.keys_file == (tmp_path / "keys.toml").resolve()
    assert config.auth.source_rate == RateLimit(5.0, 5.0)
    assert config.auth.deny_cidrs == ("10.9.0.0/16", "::1")
    assert config.auth.throttle_delay_ms == 0
    fn = config.functions[0]
    assert (fn.tenant, fn.rate, fn.max_concurrent) == ("acme", RateLimit(0.5, 4.0), 2)


@pytest.mark.parametrize(
    ("auth", "fn", "expected"),
    [
        ({"allow_cidrs": ["10.0.0.0/40"]}, {}, "auth.allow_cidrs: '10.0.0.0/40' is not an IP"),
        ({"deny_cidrs": "10.0.0.0/8"}, {}, "auth.deny_cidrs: expected an array"),
        ({"source_burst": 3}, {}, "auth.source_burst: needs source_rate_per_s"),
        ({"max_skew_s": 0}, {}, "auth.max_skew_s"),
        ({"keys_file": "absent.toml"}, {}, "auth.keys_file: cannot read keys file"),
        ({"colour": 1}, {}, "auth.colour: unknown key"),
        ({}, {"tenant": "Acme"}, "functions[0].tenant"),
        ({}, {"rate_per_s": -1}, "functions[0].rate_per_s"),
        ({}, {"rate_per_s": 0}, "functions[0].rate_per_s: expected a number > 0, got 0"),
        ({}, {"rate_per_s": float("nan")}, "functions[0].rate_per_s: expected a number > 0"),
        ({"source_rate_per_s": True}, {}, "auth.source_rate_per_s: expected a number > 0"),
        ({}, {"rate_per_s": 2, "burst": 0.5}, "functions[0].burst: expected a positive integer"),
        ({}, {"max_concurrent": 0}, "functions[0].max_concurrent"),
        # A size that would overflow the daemon's arithmetic is a config error, not a crash.
        ({"replay_cache_mb": 1e308}, {}, "auth.replay_cache_mb: expected a number ≥ 0.01 and ≤"),
        ({"replay_cache_mb": float("inf")}, {}, "auth.replay_cache_mb"),
        ({}, {"rate_per_s": float("inf")}, "functions[0].rate_per_s"),
    ],
)
def test_refused(tmp_path: Path, auth: dict, fn: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw(tmp_path, auth, **fn), base_dir=tmp_path)
    assert expected in str(info.value)


def test_keys_file_must_be_private_and_not_combined_with_a_token(tmp_path: Path) -> None:
    keys_file(tmp_path, mode=0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        parse_config(raw(tmp_path, {"keys_file": "keys.toml"}), base_dir=tmp_path)
    keys_file(tmp_path)
    (tmp_path / "token").write_text("t")
    both = raw(tmp_path, {"keys_file": "keys.toml"})
    both["gateway"] = {"auth_token_file": "token"}
    with pytest.raises(ConfigError, match=r"auth\.keys_file: conflicts"):
        parse_config(both, base_dir=tmp_path)


def test_a_keys_file_is_enough_on_a_public_address(tmp_path: Path) -> None:
    keys_file(tmp_path)
    public = raw(tmp_path, {"keys_file": "keys.toml"})
    public["gateway"] = {"http": "0.0.0.0:8470"}
    assert parse_config(public, base_dir=tmp_path).auth.keys_file is not None
    del public["auth"]
    with pytest.raises(ConfigError, match="auth_token_file"):
        parse_config(public, base_dir=tmp_path)


def test_keys_file_goes_with_the_framed_ingress(tmp_path: Path) -> None:
    # Framed calls are signed too (protocol/ingress_signing.py), so tenants keep
    # their signatures and limits on both ingresses.
    keys_file(tmp_path)
    framed = raw(tmp_path, {"keys_file": "keys.toml"})
    framed["gateway"] = {"framed": "127.0.0.1:0"}
    config = parse_config(framed, base_dir=tmp_path)
    assert config.auth.keys_file is not None and config.gateway.framed is not None


def test_replay_cache_is_bounded_in_megabytes_and_the_old_count_key_says_so(
    tmp_path: Path,
) -> None:
    config = parse_config(raw(tmp_path, {"replay_cache_mb": 4}), base_dir=tmp_path)
    assert config.auth.replay_cache_bytes == 4 << 20
    small = parse_config(raw(tmp_path, {"replay_cache_mb": 0.5}), base_dir=tmp_path)
    assert small.auth.replay_cache_bytes == 1 << 19
    with pytest.raises(ConfigError, match=r"auth\.replay_cache_mb.*number ≥ 0.01"):
        parse_config(raw(tmp_path, {"replay_cache_mb": 0}), base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"auth\.replay_cache_size.*replaced by replay_cache_mb"):
        parse_config(raw(tmp_path, {"replay_cache_size": 100_000}), base_dir=tmp_path)
