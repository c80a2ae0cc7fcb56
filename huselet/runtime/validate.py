"""Validate the ``[runtimes.*]`` tables exactly as ``huselet run`` will.

Each runtime plugin parses its own table in its constructor (pure parsing,
no host probing: that happens in ``run``). :func:`check_runtimes` builds
every runtime the configuration names — in a ``[runtimes.NAME]`` table or a
function's ``runtime`` — and turns a refusal into a
:class:`~huselet.errors.ConfigError`, so ``run --check``, ``run`` and a
reload all refuse ``uid_base = 0``, ``pids_max = 1``, ``cgroup_parent =
"../../x"`` or an unknown key with the same key path, never a traceback.
"""

from __future__ import annotations

from huselet.config import Config
from huselet.errors import ConfigError
from huselet.runtime import create_runtimes
from huselet.runtime.base import Runtime, RuntimeError_


def runtime_names(config: Config) -> set[str]:
    """Every runtime the configuration uses or configures (``process`` always)."""
    return set(config.runtimes) | {fn.runtime for fn in config.functions} | {"process"}


def check_runtimes(config: Config) -> dict[str, Runtime]:
    """Build (not start) each runtime; ConfigError naming the key on any refusal."""
    try:
        return create_runtimes(runtime_names(config), config.runtimes, node=config.node)
    except RuntimeError_ as exc:
        raise ConfigError("", str(exc)) from None
    except Exception as exc:  # a third-party plugin's own bug: still not a traceback
        raise ConfigError("runtimes", f"a runtime plugin refused its table: {exc!r}") from None
