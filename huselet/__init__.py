"""huselet: the node daemon of a FaaS platform.

One Trio process per host combining a node gateway (HTTP ingress, per-function
request buffers), a node-local dispatcher (instance lifecycle, capacity) and a
package cache. The composition root is :mod:`huselet.daemon`; the command line
is :mod:`huselet.cli`.

Keep this module import-free: the worker SDK (``huselet.worker``) runs inside
every sandbox and pays for whatever this file imports at each cold start.
"""

__version__ = "0.1.0"
