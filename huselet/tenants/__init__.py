"""Tenants: who may call which functions, how often, and how that is proven.

- :mod:`huselet.tenants.keys`: the keys file (tenants, access keys with
  validity windows, allowed functions, per-tenant limits), validated whole;
- :mod:`huselet.tenants.keystore`: the running key ring, re-read on reload
  and when the file changes;
- :mod:`huselet.tenants.limits`: token buckets, concurrency gates and the
  bounded replay cache, all node-wide and kept across reloads;
- :mod:`huselet.tenants.sources`: the CIDR allow/deny list of the ingress;
- :mod:`huselet.tenants.stats`: refusal counters and per-tenant rates as plain dicts.

The signing scheme itself is :mod:`huselet.client.signing`, shared with callers.
Nothing here does network I/O: the admission core
(:mod:`huselet.gateway.admission`) composes these parts per request.
"""
