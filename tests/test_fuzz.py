"""Short fuzz runs of every parser of outside input (issue 11); long ones: bench/bench_fuzz.py.

Each target (``tests/fuzz_support.py``) must raise nothing but its typed
errors on 3,000 mutated inputs, and the deep-nesting shapes of issue 11 are
always among them. Hypothesis adds structure-aware cases: arbitrary nested
values as a config table and as a msgpack frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
from fuzz_support import FuzzReport, fuzz, run_frames, targets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from huselet.config import parse_config
from huselet.errors import ConfigError
from protocol.errors import ProtocolError

TARGETS = targets()
SHORT_RUN = 3000


def describe(report: FuzzReport) -> str:
    return "\n".join(f"{c.error}: {c.data[:120]!r}" for c in report.crashes[:5])


@pytest.mark.parametrize("name", ["config", "frames", "image_index", "http_head", "worker_json"])
def test_short_fuzz_run_finds_no_crash(name: str) -> None:
    report = fuzz(TARGETS[name], count=SHORT_RUN, seed=11)
    assert report.inputs == SHORT_RUN
    assert report.crash_count == 0, describe(report)


def test_issue_11_shapes_are_typed_errors() -> None:
    """The exact inputs of the attack pass, for each parser they apply to."""
    deep_toml = b"y = " + b"[" * 100_000 + b"]" * 100_000 + b"\n"
    with pytest.raises(ConfigError, match="too deeply"):
        TARGETS["config"].run(deep_toml)
    deep_frame = b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(ProtocolError):
        run_frames(len(deep_frame).to_bytes(4, "big") + deep_frame)
    nested_map = {"a": None}
    for _ in range(40):
        nested_map = {"a": nested_map}
    body = msgpack.packb(nested_map)
    with pytest.raises(ProtocolError, match="nests deeper than 32 levels"):
        run_frames(len(body).to_bytes(4, "big") + body)


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
keys = st.sampled_from(
    [
        *("node", "gateway", "cache", "functions", "runtimes", "health", "scheduler", "admin"),
        *("id", "http", "name", "package", "handler", "runtime", "memory_mb", "env", "fork"),
        *("publish_dir", "addresses", "uid_base", "max_buffered_mb", "x"),
    ]
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, values, max_size=6))
def test_any_structure_as_a_config_is_a_config_error_or_a_config(raw: dict[str, Any]) -> None:
    try:
        parse_config(raw, base_dir=Path("/nonexistent-hl"))
    except ConfigError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), values, max_size=6))
def test_any_msgpack_map_frame_is_accepted_or_a_protocol_error(message: dict[str, Any]) -> None:
    try:
        body = msgpack.packb(message, use_bin_type=True)
    except (OverflowError, ValueError):
        return  # not encodable (ints beyond 64 bits): no peer can send it either
    try:
        run_frames(len(body).to_bytes(4, "big") + body)
    except ProtocolError:
        pass
