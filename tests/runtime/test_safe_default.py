"""The shipped configs are safe by default (issue 11, finding 8).

Every function of the embedded default and of the example config runs on the
isolated ``fork`` runtime, with no degraded mode; a host that cannot isolate
is refused with what it lacks (the end-to-end probes live in
``tests/e2e/test_safe_default_e2e.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from huselet.config import load_config
from huselet.runtime import available_runtimes, create_runtimes
from huselet.runtime.base import RuntimeConfigError
from huselet.runtime.isolation import HostFeatures, resolve

REPO = Path(__file__).resolve().parents[2]
SHIPPED = [None, REPO / "systemd" / "huselet.toml"]


@pytest.mark.parametrize("path", SHIPPED, ids=["embedded-default", "example"])
def test_shipped_configs_isolate_every_function(path: Path | None) -> None:
    config = load_config(path, known_runtimes=available_runtimes().keys())
    assert config.functions
    assert {fn.runtime for fn in config.functions} == {"fork"}
    runtimes = create_runtimes({"fork"}, config.runtimes, node=config.node)
    iso = runtimes["fork"].isolation  # type: ignore[attr-defined]
    assert iso.isolation and iso.seccomp and iso.cgroups and iso.network == "none"
    assert not iso.allow_degraded


@pytest.mark.parametrize("path", SHIPPED, ids=["embedded-default", "example"])
def test_a_host_that_cannot_isolate_is_refused_with_what_it_lacks(path: Path | None) -> None:
    config = load_config(path, known_runtimes=available_runtimes().keys())
    iso = create_runtimes({"fork"}, config.runtimes, node=config.node)["fork"].isolation  # type: ignore[attr-defined]
    host = HostFeatures(root=False, arch_ok=True, userns="not probed", seccomp=True, cgroups=None)
    with pytest.raises(RuntimeConfigError) as refused:
        resolve(iso, host, "fork")
    message = str(refused.value)
    assert "not root" in message and "cgroups need root" in message
    assert "runtimes.fork.allow_degraded = true" in message


def test_an_image_only_function_never_gets_the_host_root_bound() -> None:
    from huselet.config import IMAGE_ONLY_CWD
    from huselet.sandbox import rootfs

    binds = rootfs.plan_binds(str(IMAGE_ONLY_CWD), [])
    assert binds and all(b.source != "/" for b in binds)
