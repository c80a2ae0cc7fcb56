"""The admin interface: a local Unix socket through which ``huselet ctl`` drives the daemon.

- :mod:`huselet.admin.server` — :class:`AdminServer`, inside the daemon (Trio).
- :mod:`huselet.admin.client` — :class:`AdminClient`, blocking, for the CLI.
- :mod:`huselet.admin.render` — text tables for the CLI's output.
- :mod:`huselet.admin.errors` — the typed errors of both ends.

This file deliberately imports nothing: the CLI imports the client and the
renderer and should not pay for Trio at each invocation. It only holds the wire
limits both ends must agree on.
"""

# Requests are tiny; 1 MiB bounds what one peer can make the daemon buffer.
MAX_REQUEST_FRAME = 1 << 20
# Replies may list many instances; the client accepts up to 8 MiB.
MAX_REPLY_FRAME = 8 * 1024 * 1024
