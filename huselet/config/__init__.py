"""Configuration: one TOML file validated at start into frozen, typed settings.

- :mod:`huselet.config.settings`: the settings classes (plain frozen data);
- :mod:`huselet.config.loader`: reading the file, ``[node]``, ``[gateway]``, ``[admin]``;
- :mod:`huselet.config.functions`: ``[[functions]]`` (entry, code source, layers);
- :mod:`huselet.config.cache`: the ``[cache]`` table;
- :mod:`huselet.config.scheduler`: the ``[scheduler]`` table;
- :mod:`huselet.config.host`: host facts the file is checked against;
- :mod:`huselet.config.table`: the table validator every section (and every
  runtime's own ``[runtimes.NAME]`` table) is read through;
- :mod:`huselet.config.health`: the ``[health]`` table;
- :mod:`huselet.config.auth`: the ``[auth]`` table (tenants' keys file, ingress limits);
- :mod:`huselet.config.observe`: the ``[metrics]`` and ``[log]`` tables.

Import the names from here; the modules are an implementation detail.
"""

from huselet.config.auth import AuthSettings
from huselet.config.functions import parse_function_spec
from huselet.config.health import HealthSettings
from huselet.config.loader import EMBEDDED_DEFAULT, load_config, parse_config
from huselet.config.observe import LogSettings, MetricsSettings
from huselet.config.settings import (
    IMAGE_ONLY_CWD,
    AdminSettings,
    CacheSettings,
    Config,
    FunctionSettings,
    GatewaySettings,
    LayerSettings,
    NodeSettings,
    SchedulerLinkSettings,
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
