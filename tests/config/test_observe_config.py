"""``[metrics]`` and ``[log]`` validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from huselet.config import TcpAddress, parse_config
from huselet.errors import ConfigError


def raw(tmp_path: Path, **tables: object) -> dict:
    pkg = tmp_path / "pkg"
    pkg.mkdir(exist_ok=True)
    (pkg / "main.py").write_text("def handler(event, context):\n    return event\n")
    return {
        "node": {"state_dir": str(tmp_path / "s"), "run_dir": "/tmp/hl-config-test/r"},
        "functions": [{"name": "f", "package": "pkg", "handler": "main:handler"}],
        **tables,
    }


def test_defaults_keep_metrics_without_a_listener(tmp_path: Path) -> None:
    config = parse_config(raw(tmp_path), base_dir=tmp_path)
    assert config.metrics.enabled and config.metrics.http is None
    assert config.log.access_rate == 100 and config.log.ring_records == 2000
    assert config.log.buffer_kb == 4096


def test_a_loopback_listener_and_log_knobs(tmp_path: Path) -> None:
    config = parse_config(
        raw(
            tmp_path,
            metrics={"http": "127.0.0.1:9470"},
            log={"access_rate": 0, "ring_records": 50},
        ),
        base_dir=tmp_path,
    )
    assert config.metrics.http == TcpAddress("127.0.0.1", 9470)
    assert (config.log.access_rate, config.log.ring_records) == (0, 50)


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        ({"metrics": {"http": "0.0.0.0:9470"}}, "metrics.http: 0.0.0.0:9470 is reachable"),
        ({"metrics": {"http": "nowhere"}}, "metrics.http: expected"),
        ({"metrics": {"enabled": "yes"}}, "metrics.enabled"),
        ({"metrics": {"port": 1}}, "metrics.port"),
        ({"log": {"access_rate": -1}}, "log.access_rate"),
        ({"log": {"ring_records": 0}}, "log.ring_records"),
        ({"log": {"ring_records": 10**6}}, "log.ring_records: at most"),
        ({"log": {"buffer_kb": 8}}, "log.buffer_kb: between 16 and"),
        ({"log": {"buffer_kb": 0}}, "log.buffer_kb"),
    ],
)
def test_bad_values_are_refused_with_their_key(tmp_path: Path, tables: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw(tmp_path, **tables), base_dir=tmp_path)
    assert expected in str(info.value)


def test_a_remote_listener_needs_allow_remote(tmp_path: Path) -> None:
    config = parse_config(
        raw(tmp_path, metrics={"http": "0.0.0.0:9470", "allow_remote": True}), base_dir=tmp_path
    )
    assert config.metrics.http == TcpAddress("0.0.0.0", 9470)
