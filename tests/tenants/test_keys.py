"""The keys file: validation with key paths, permissions, validity windows, grants."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from huselet.tenants.keys import KeysFileError, read_keys_file

SECRET = "0123456789abcdef-secret"


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_a_full_file(tmp_path: Path) -> None:
    ring = read_keys_file(
        write(
            tmp_path / "keys.toml",
            f"""
[[tenants]]
name = "acme"
functions = ["report", "acme-*"]
rate_per_s = 2.5
max_concurrent = 3
[[tenants.keys]]
id = "HKONE1"
secret = "{SECRET}"
not_before = 2026-01-01T00:00:00Z
expires = "2026-02-01T00:00:00+01:00"
[[tenants]]
name = "globex"
""",
        )
    )
    acme = ring.tenants["acme"]
    assert acme.rate is not None and (acme.rate.rate_per_s, acme.rate.burst) == (2.5, 2.5)
    assert acme.max_concurrent == 3
    assert acme.grants("report") and acme.grants("acme-x") and acme.grants("acme-")
    assert not acme.grants("reports") and not acme.grants("xacme-x")
    key = ring.keys["HKONE1"]
    assert key.tenant == "acme" and key.secret == SECRET.encode()
    assert key.not_before == 1767225600.0 and key.expires == 1769900400.0
    assert not key.valid_at(1767225599) and key.valid_at(1767225600)
    assert not key.valid_at(1769900400)
    assert key.describe(1767225599)["state"] == "pending"
    assert "secret" not in key.describe(0) and SECRET not in repr(key)
    assert ring.tenants["globex"].rate is None


def test_json_format(tmp_path: Path) -> None:
    data = {"tenants": [{"name": "a", "keys": [{"id": "HKJSON", "secret": SECRET}]}]}
    ring = read_keys_file(write(tmp_path / "keys.json", json.dumps(data)))
    assert ring.keys["HKJSON"].tenant == "a"


def test_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "keys.toml", "", mode=0o640)
    with pytest.raises(KeysFileError, match="chmod 600"):
        read_keys_file(path)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ('[[tenants]]\nname = "A"', "tenants[0].name"),
        ('[[tenants]]\nname = "a"\n[[tenants]]\nname = "a"', "tenants[1].name"),
        ('[[tenants]]\nname = "a"\nfunctions = ["*x"]', "tenants[0].functions"),
        ('[[tenants]]\nname = "a"\nrate_per_s = 0', "tenants[0].rate_per_s"),
        ('[[tenants]]\nname = "a"\nburst = 3', "tenants[0].burst"),
        ('[[tenants]]\nname = "a"\ncolour = 3', "tenants[0].colour"),
        ('[[tenants]]\nname = "a"\n[[tenants.keys]]\nid = "HKX1"', "tenants[0].keys[0].secret"),
        (
            f'[[tenants]]\nname = "a"\n[[tenants.keys]]\nid = "HKX1"\nsecret = "{SECRET}"\n'
            "expires = 2026-01-01T00:00:00",
            "tenants[0].keys[0].expires",
        ),
        (
            f'[[tenants]]\nname = "a"\n[[tenants.keys]]\nid = "HKX1"\nsecret = "{SECRET}"\n'
            f'[[tenants]]\nname = "b"\n[[tenants.keys]]\nid = "HKX1"\nsecret = "{SECRET}"',
            "tenants[1].keys[0].id",
        ),
    ],
)
def test_errors_name_the_key(tmp_path: Path, body: str, where: str) -> None:
    with pytest.raises(KeysFileError) as info:
        read_keys_file(write(tmp_path / "keys.toml", body))
    assert where in str(info.value)


def test_a_short_secret_is_refused_without_being_echoed(tmp_path: Path) -> None:
    body = '[[tenants]]\nname = "a"\n[[tenants.keys]]\nid = "HKX1"\nsecret = "hunter2"'
    with pytest.raises(KeysFileError) as info:
        read_keys_file(write(tmp_path / "keys.toml", body))
    assert "too short" in str(info.value) and "hunter2" not in str(info.value)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeysFileError, match="not valid TOML"):
        read_keys_file(write(tmp_path / "keys.toml", "[[tenants]\n"))
    with pytest.raises(KeysFileError, match="cannot read"):
        read_keys_file(tmp_path / "absent.toml")
