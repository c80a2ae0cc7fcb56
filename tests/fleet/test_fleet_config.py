"""The [scheduler] table's trust keys: TLS files, plaintext only on loopback, deploy policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from huselet.config import parse_config
from huselet.errors import ConfigError


def base(tmp_path: Path, scheduler: dict) -> dict:
    return {
        "node": {"state_dir": str(tmp_path / "s"), "run_dir": "/tmp/hl-config-test/r"},
        "scheduler": scheduler,
    }


def test_policy_tls_and_epoch_file_are_parsed(tmp_path: Path) -> None:
    (tmp_path / "pkgs").mkdir()
    raw = base(
        tmp_path,
        {
            "addresses": ["10.0.0.1:7000"],
            "tls_ca": "ca.pem",
            "tls_cert": "/etc/huselet/n.pem",
            "tls_key": "/etc/huselet/n.key",
            "tls_server_name": "sched.example",
            "package_roots": [str(tmp_path / "pkgs")],
            "origins": ["https://images.example"],
            "runtimes": ["bwrap"],
            "max_memory_mb": 512,
            "max_instances": 4,
        },
    )
    s = parse_config(raw, base_dir=tmp_path).scheduler
    assert s is not None and s.tls is not None
    assert s.tls.ca == tmp_path / "ca.pem" and s.tls.server_name == "sched.example"
    assert s.policy.package_roots == ((tmp_path / "pkgs").resolve(),)
    assert s.policy.origins == ("https://images.example",) and s.policy.runtimes == ("bwrap",)
    assert (s.policy.max_memory_mb, s.policy.max_instances) == (512, 4)
    assert s.epoch_file == tmp_path / "s" / "fleet-epoch"


def test_safe_defaults(tmp_path: Path) -> None:
    s = parse_config(base(tmp_path, {"addresses": ["127.0.0.1:7000"]}), base_dir=tmp_path)
    assert s.scheduler is not None
    policy = s.scheduler.policy
    assert policy.package_roots == () and policy.runtimes is None  # no paths by default
    assert s.scheduler.tls is None and not s.scheduler.insecure


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"addresses": ["10.0.0.1:7000"]}, "scheduler.addresses[0]: 10.0.0.1:7000 is not loopback"),
        ({"addresses": ["127.0.0.1:7000"], "tls_ca": "ca.pem"}, "scheduler.tls_cert: tls_ca"),
        ({"addresses": ["127.0.0.1:7000"], "package_roots": ["rel"]}, "scheduler.package_roots[0]"),
        ({"addresses": ["127.0.0.1:7000"], "runtimes": "process"}, "scheduler.runtimes: expected"),
        ({"addresses": ["127.0.0.1:7000"], "max_instances": 0}, "scheduler.max_instances"),
    ],
)
def test_trust_keys_are_validated(tmp_path: Path, table: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(base(tmp_path, table), base_dir=tmp_path)
    assert str(info.value).startswith(expected), str(info.value)


def test_plaintext_to_a_remote_scheduler_needs_insecure(tmp_path: Path) -> None:
    raw = base(tmp_path, {"addresses": ["10.0.0.1:7000"], "insecure": True})
    s = parse_config(raw, base_dir=tmp_path).scheduler
    assert s is not None and s.insecure
