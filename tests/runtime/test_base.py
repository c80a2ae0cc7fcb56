"""The runtime plugin base (huselet.runtime.base): a plugin's table read with ConfigTable."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from huselet.config import NodeSettings
from huselet.errors import ConfigError
from huselet.runtime.base import InstanceHandle, InstanceSpec, Runtime, RuntimeConfigError


class SocketRuntime(Runtime):
    """What a third-party runtime writes: its keys read inside ``config_table()``."""

    name: ClassVar[str] = "myrt"

    def __init__(self, settings: Any, *, node: NodeSettings) -> None:
        super().__init__(settings, node=node)
        with self.config_table() as table:
            self.socket = table.path("socket", Path("/run/myrt.sock"))
            self.workers = table.positive_int("workers", default=4, maximum=64)

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        raise NotImplementedError  # this test only reads the table; nothing starts


def node(tmp: Path) -> NodeSettings:
    return NodeSettings("n", tmp, tmp)


def test_a_plugin_reads_its_table_with_the_config_validator(tmp_path: Path) -> None:
    rt = SocketRuntime({"socket": "rt.sock", "workers": 8}, node=node(tmp_path))
    # Relative paths resolve as [[functions]] paths do: against the node's state_dir.
    assert rt.socket == tmp_path / "rt.sock" and rt.workers == 8


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"sockt": "/x"}, "runtimes.myrt.sockt: unknown key"),
        ({"workers": "4"}, 'runtimes.myrt.workers: expected a positive integer, got "4"'),
        ({"workers": 65}, "runtimes.myrt.workers: 65 is over the maximum of 64"),
    ],
)
def test_a_plugin_table_refusal_is_a_runtime_config_error_naming_the_key(
    tmp_path: Path, table: dict[str, Any], message: str
) -> None:
    with pytest.raises(RuntimeConfigError) as refused:
        SocketRuntime(table, node=node(tmp_path))
    # The runtime's own error type, not the loader's: the daemon, run --check and
    # reload catch RuntimeConfigError where a runtime is built.
    assert not isinstance(refused.value, ConfigError)
    assert str(refused.value) == message
