"""``[scheduler]``: the link to the central scheduler (addresses, timeouts, TLS, policy)."""

from __future__ import annotations

import re

from huselet.config.host import host_memory_mb
from huselet.config.settings import NodeSettings, SchedulerLinkSettings
from huselet.config.table import ConfigTable
from huselet.config.trust import loopback_host, parse_link_tls, parse_policy
from huselet.errors import ConfigError


def parse_scheduler(st: ConfigTable, node: NodeSettings) -> SchedulerLinkSettings:
    addresses = st.tcp_address_list("addresses")
    if not addresses:
        raise ConfigError(st.key("addresses"), "at least one scheduler address is required")
    labels_t = st.table("labels")
    defaults = SchedulerLinkSettings
    base_ms = st.positive_int("backoff_base_ms", default=defaults.backoff_base_ms)
    max_ms = st.positive_int("backoff_max_ms", default=defaults.backoff_max_ms)
    if max_ms < base_ms:
        raise ConfigError(st.key("backoff_max_ms"), f"{max_ms} is below backoff_base_ms {base_ms}")
    settings = SchedulerLinkSettings(
        addresses=tuple(addresses),
        # The protocol limits ids to 128 characters.
        node_id=st.string("node_id", default=node.id, pattern=re.compile(r"^\S{1,128}$")),
        memory_mb=st.positive_int("memory_mb", default=host_memory_mb()),
        labels={k: labels_t.string(k) for k in labels_t.key_names()},
        connect_timeout_ms=st.positive_int("connect_timeout_ms", default=2_000),
        handshake_timeout_ms=st.positive_int("handshake_timeout_ms", default=10_000),
        send_timeout_ms=st.positive_int("send_timeout_ms", default=5_000),
        batch_delay_ms=st.non_negative_int("batch_delay_ms", default=50),
        silent_heartbeats=st.positive_int("silent_heartbeats", default=3),
        backoff_base_ms=base_ms,
        backoff_max_ms=max_ms,
        persist_functions=st.boolean("persist_functions", default=True),
        policy=parse_policy(st),
        tls=parse_link_tls(st),
        insecure=st.boolean("insecure", default=False),
        epoch_file=node.state_dir / "fleet-epoch",
    )
    if settings.tls is None and not settings.insecure:
        for i, address in enumerate(settings.addresses):
            if not loopback_host(address.host):
                raise ConfigError(
                    f"{st.key('addresses')}[{i}]",
                    f"{address} is not loopback: set tls_ca/tls_cert/tls_key "
                    "(or insecure = true to allow plaintext)",
                )
    st.finish()
    return settings
