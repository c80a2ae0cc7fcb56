"""Configuration: one TOML file validated at start into frozen, typed settings.

- :mod:`huselet.config.settings`: the settings classes and the parser of the file;
- :mod:`huselet.config.table`: the table validator every section (and every
  runtime's own ``[runtimes.NAME]`` table) is read through;
- :mod:`huselet.config.health`: the ``[health]`` table;
- :mod:`huselet.config.auth`: the ``[auth]`` table (tenants' keys file, ingress limits);
- :mod:`huselet.config.observe`: the ``[metrics]`` and ``[log]`` tables.

Import the names from here; the modules are an implementation detail.
"""

from huselet.config.auth import AuthSettings
from huselet.config.health import HealthSettings
from huselet.config.observe import LogSettings, MetricsSettings
from huselet.config.settings import (
    EMBEDDED_DEFAULT,
    IMAGE_ONLY_CWD,
    AdminSettings,
    CacheSettings,
    Config,
    FunctionSettings,
    GatewaySettings,
    LayerSettings,
    NodeSettings,
    SchedulerLinkSettings,
    load_config,
    parse_config,
    parse_function_spec,
)
from huselet.config.table import ConfigTable, TcpAddress

__all__ = [
    "EMBEDDED_DEFAULT",
    "IMAGE_ONLY_CWD",
    "AdminSettings",
    "AuthSettings",
    "CacheSettings",
    "Config",
    "ConfigTable",
    "FunctionSettings",
    "GatewaySettings",
    "HealthSettings",
    "LayerSettings",
    "LogSettings",
    "MetricsSettings",
    "NodeSettings",
    "SchedulerLinkSettings",
    "TcpAddress",
    "load_config",
    "parse_config",
    "parse_function_spec",
]
